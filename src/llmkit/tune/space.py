"""A search space: which keys of a stage's config section a study varies, and over what.

Written in YAML, one entry per key path of the stage's section (nested keys dotted, as `lora.r`):

    lr: {log-float: [1.0e-5, 3.0e-4]}      # sampled on a log scale
    lora.r: {int: [4, 16]}                 # or nested: lora: {r: {int: [4, 16]}}
    warmup_ratio: {float: [0.0, 0.2]}      # optional `step: 0.05`
    epochs: {int: [1, 4]}                  # bounds included; optional `step: 1`
    batch_size: {categorical: [8, 16, 32]}

Everything is checked before a trial runs: the key exists in the section (else a "did you mean"),
the range is not empty, and both ends (every choice) are values the section accepts.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from llmkit.config import SECTIONS, validate_section
from llmkit.errors import UserError

KINDS = ("float", "log-float", "int", "categorical")
EXAMPLE = "e.g. lr: {log-float: [1.0e-5, 3.0e-4]} or batch_size: {categorical: [8, 16]}"


@dataclass(frozen=True)
class Param:
    key: str                       # dotted key path in the stage's section
    kind: str                      # one of KINDS
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """The value an Optuna trial draws for this key."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.kind == "log-float",
                                   step=None if self.step is None else float(self.step))

    def holds(self, value: Any) -> bool:
        """Whether `value` is one this parameter can draw (in the range, on the step's grid, or a choice)."""
        if self.kind == "categorical":
            return value in self.choices
        if not _is_number(value) or not self.low <= value <= self.high:
            return False
        if self.kind == "int":
            return float(value).is_integer() and (int(value) - int(self.low)) % int(self.step or 1) == 0
        return self.step is None or abs((value - self.low) / self.step - round((value - self.low) / self.step)) < 1e-9

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.key} in {list(self.choices)}"
        return f"{self.key} {self.kind} [{self.low}, {self.high}]" + (f" step {self.step}" if self.step else "")


def read_space(source: str | Path | dict | None, stage: str, defaults: dict[str, dict[str, Any]] | None = None) -> list[Param]:
    """The checked parameters of a space file (or mapping); the stage's default space when None."""
    where = "the default space"
    if source is None:
        body = (defaults or {}).get(stage, {})
    elif isinstance(source, dict):
        body, where = source, "the space"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise UserError(f"--space {path}: file not found; write a YAML search space ({EXAMPLE})")
        try:
            body = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            at = f":{mark.line + 1}" if mark else ""
            raise UserError(f"{path}{at}: invalid YAML ({getattr(err, 'problem', None) or err}); {EXAMPLE}") from None
        except UnicodeDecodeError as err:
            raise UserError(f"--space {path}: not UTF-8 text at byte {err.start}; save it as UTF-8") from None
    if not isinstance(body, dict) or not body:
        raise UserError(f"{where}: a search space is a mapping of config keys to ranges ({EXAMPLE})")
    params = [_param(key, spec, stage, where) for key, spec in _flat(body).items()]
    for p in params:
        _check_values(p, stage, where)
    return params


def _flat(body: dict, prefix: str = "") -> dict[str, Any]:
    """Nested groups (`lora: {r: {int: [4, 16]}}`) as dotted keys (`lora.r`); both spellings work."""
    out: dict[str, Any] = {}
    for key, spec in body.items():
        dotted = f"{prefix}{key}"
        if isinstance(spec, dict) and spec and all(isinstance(v, dict) for v in spec.values()):
            out.update(_flat(spec, dotted + "."))
        else:
            out[dotted] = spec
    return out


def _param(key: str, spec: Any, stage: str, where: str) -> Param:
    _check_key(key, stage, where)
    if not isinstance(spec, dict) or not (set(spec) & set(KINDS)):
        raise UserError(f"{where}: {key}: give one of {', '.join(KINDS)} ({EXAMPLE})")
    kinds = [k for k in spec if k in KINDS]
    extra = sorted(set(spec) - set(KINDS) - {"step"})
    if len(kinds) > 1 or extra:
        raise UserError(f"{where}: {key}: one range per key and only 'step' beside it; found {sorted(spec)} ({EXAMPLE})")
    kind, value, step = kinds[0], spec[kinds[0]], spec.get("step")
    if kind == "categorical":
        if not isinstance(value, list) or not value:
            raise UserError(f"{where}: {key}: categorical needs a non-empty list of choices, e.g. [8, 16, 32]")
        if step is not None:
            raise UserError(f"{where}: {key}: categorical takes no step")
        return Param(key, kind, choices=tuple(value))
    if isinstance(value, list):  # YAML reads 1e-3 (no dot) as text; a config file's float fields accept it
        value = [_yaml_exponent(v) for v in value]
    if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
        raise UserError(f"{where}: {key}: {kind} needs [low, high] as two numbers, got {value!r}")
    low, high = value
    if kind == "int" and not all(float(v).is_integer() for v in value):
        raise UserError(f"{where}: {key}: int bounds must be whole numbers, got [{low}, {high}]")
    if low > high or (low == high and kind != "int"):
        raise UserError(f"{where}: {key}: the range [{low}, {high}] is empty; give low < high")
    if kind == "log-float" and low <= 0:
        raise UserError(f"{where}: {key}: log-float needs low > 0 (a log scale never reaches {low}); e.g. [1.0e-5, 1.0e-3]")
    if step is not None and (not _is_number(step) or step <= 0 or kind == "log-float"):
        raise UserError(f"{where}: {key}: step must be a number above 0 (and log-float takes none), got {step!r}")
    return Param(key, kind, low, high, step)


def _yaml_exponent(v: Any) -> Any:
    """'1e-3' as 0.001: YAML 1.1 wants 1.0e-3 for a number, and the text form is what people write."""
    if isinstance(v, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", v.strip()):
        return float(v)
    return v


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_key(key: str, stage: str, where: str) -> None:
    """The key names a leaf of the stage's section (a nested section is entered, never replaced)."""
    model: type[BaseModel] = SECTIONS[stage]
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean '{'.'.join([*parts[:i], close[0]])}'?)" if close else ""
            raise UserError(f"{where}: unknown {stage} key '{key}'{hint}; `llmkit config show {stage}` lists the keys")
        annotation = fields[part].annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i == len(parts) - 2 and _is_mapping(annotation):
            return  # a field of free keys (pretrain.model: LlamaConfig overrides); _check_values validates the key
        if i < len(parts) - 1:
            if not nested:
                raise UserError(f"{where}: {stage} key '{'.'.join(parts[: i + 1])}' has no keys inside; use it as '{'.'.join(parts[: i + 1])}'")
            model = annotation
        elif nested:
            raise UserError(f"{where}: '{key}' is a group of keys; search its keys, e.g. '{key}.{next(iter(annotation.model_fields))}'")


def _is_mapping(annotation: Any) -> bool:
    """dict[...] or Annotated[dict[...], ...]: a field whose keys are the user's (pretrain.model), not a section's."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation is dict or typing.get_origin(annotation) is dict


def _check_values(p: Param, stage: str, where: str) -> None:
    """Both ends of a range (every choice) must be values the stage's section accepts."""
    for value in (p.choices or (p.low, p.high)):
        try:
            validate_section(stage, with_values({}, {p.key: value}))
        except UserError as err:
            if "unknown key" in str(err):  # a misspelt key inside a free mapping (pretrain.model): no range to narrow
                raise UserError(f"{where}: {err}") from None
            raise UserError(f"{where}: {p.key} = {value!r} is not a valid {stage} value ({err}); narrow the range") from None


def start_values(params: list[Param], body: dict[str, Any]) -> dict[str, Any]:
    """The values `body` (the section every trial starts from) gives the searched keys, where the space holds them."""
    out = {}
    for p in params:
        node: Any = body
        for part in p.key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if p.holds(node):
            out[p.key] = int(node) if p.kind == "int" else node  # epochs: 3.0 in a float field, drawn as an int
    return out


def with_values(body: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """`body` (a section as a dict) with each dotted key set to its value."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in body.items()}
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
