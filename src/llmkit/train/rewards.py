"""Rewards for `llmkit train grpo`: functions `(prompt, completion, record) -> float` computed by code.

Built in (chosen by `--reward NAME`; each reads the config keys it names):

- `number`: 1 when the last number in the answer equals the last number of the record's reference answer
  (the conversation's last assistant turn), else 0. Commas between digits and a trailing ".0" are ignored.
- `json`: 1 when the answer (or its first ```json block) parses and validates against `--schema-file`,
  0.5 when it parses but does not validate, else 0.
- `regex`: 1 when `--pattern` matches the answer (re.search), else 0.
- `length`: 1 when the answer has between `--min-chars` and `--max-chars` characters, else 0.

`--reward module:function` imports the user's own function (the module from the current folder or the
Python path: their code, named by them; nothing is fetched). Whatever computes it, a reward that raises
or is not a finite number stops training with the prompt that broke it.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmkit.config import GrpoConfig
from llmkit.errors import UserError

Reward = Callable[[str, str, dict[str, Any]], float]
BUILT_IN = ("number", "json", "regex", "length")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    found = [m.group(0) for m in _NUMBER.finditer(text)]
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:  # "1,,2": not a number after all
        return None


def reference_answer(record: dict[str, Any]) -> str:
    """The record's reference answer: its last assistant turn (a chat record), or its `answer` field."""
    if isinstance(record.get("answer"), str | int | float):
        return str(record["answer"])
    replies = [m["content"] for m in record.get("messages", []) if m.get("role") == "assistant"]
    return replies[-1] if replies else ""


def number_reward(prompt: str, completion: str, record: dict[str, Any]) -> float:
    want, got = last_number(reference_answer(record)), last_number(completion)
    return float(want is not None and got is not None and math.isclose(want, got, rel_tol=0, abs_tol=1e-9))


def _json_reward(schema: dict[str, Any]) -> Reward:
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    fence = re.compile(r"```(?:json)?\s*(.*?)```", re.S)

    def reward(prompt: str, completion: str, record: dict[str, Any]) -> float:
        block = fence.search(completion)
        try:
            value = json.loads(block.group(1) if block else completion)
        except ValueError:
            return 0.0
        return 1.0 if validator.is_valid(value) else 0.5

    return reward


def resolve_reward(cfg: GrpoConfig) -> Reward:
    """The reward `cfg.reward` names, its settings checked now (before anything is registered)."""
    name = cfg.reward
    if not name:
        raise UserError(f"grpo.reward is not set: pass --reward with one of {', '.join(BUILT_IN)} or module:function")
    if name == "number":
        return number_reward
    if name == "regex":
        if not cfg.pattern:
            raise UserError("grpo.pattern is not set: --reward regex needs --pattern REGEX")
        try:
            pattern = re.compile(cfg.pattern)
        except re.error as err:
            raise UserError(f"grpo.pattern {cfg.pattern!r} is not a regular expression: {err}") from None
        return lambda prompt, completion, record: float(pattern.search(completion) is not None)
    if name == "length":
        if cfg.max_chars and cfg.max_chars < cfg.min_chars:
            raise UserError(f"grpo.max_chars {cfg.max_chars} is below grpo.min_chars {cfg.min_chars}")
        if not (cfg.min_chars or cfg.max_chars):
            raise UserError("--reward length needs --min-chars and/or --max-chars")
        top = cfg.max_chars or math.inf
        return lambda prompt, completion, record: float(cfg.min_chars <= len(completion) <= top)
    if name == "json":
        return _json_reward(_schema(cfg.schema_file))
    if ":" in name:
        return _user_function(name)
    raise UserError(f"grpo.reward '{name}' is not a built-in reward ({', '.join(BUILT_IN)}) nor module:function")


def _schema(path: str | None) -> dict[str, Any]:
    if not path:
        raise UserError("grpo.schema_file is not set: --reward json needs --schema-file SCHEMA.json")
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"grpo.schema_file {path}: cannot read it ({err.strerror})") from None
    except ValueError as err:
        raise UserError(f"grpo.schema_file {path}: not JSON ({err})") from None
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise UserError(f"grpo.schema_file {path}: not a valid JSON schema at {'/'.join(map(str, err.path)) or 'its root'}: "
                        f"{err.message}") from None
    return schema


def _user_function(spec: str) -> Reward:
    module_name, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path:  # a reward file beside the user, as `python -m` would find it
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"grpo.reward '{spec}': cannot import module '{module_name}' ({err}); the module must be "
                        "importable from the current folder or the Python path") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"grpo.reward '{spec}': module '{module_name}' has no function '{attr}'")
    return fn


def score(reward: Reward, prompt: str, completion: str, record: dict[str, Any], name: str) -> float:
    """reward(...) as a float; a raise or a value that is not a finite number is a UserError naming the prompt."""
    shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
    try:
        value = reward(prompt, completion, record)
    except Exception as err:  # the user's code: any failure is theirs to see, in one line
        raise UserError(f"reward '{name}' raised {type(err).__name__}: {err} (prompt {shown!r})") from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"reward '{name}' returned {value!r}, not a number (prompt {shown!r})") from None
    if not math.isfinite(value):
        raise UserError(f"reward '{name}' returned {value} (prompt {shown!r}); a reward must be a finite number")
    return value
