"""Config files: YAML with one section per command (`data:`, `pretrain:`, `generate:`, ...).

A command reads its own section, applies flag overrides on top (flags win) and validates. Mistakes come
back as one line naming the key path (`pretrain.lr`), the bad value and what is allowed; every section
of a file is validated, so a typo anywhere is reported. `render_defaults` writes a section's defaults
with each key's description as a comment (`llmkit config show STAGE`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from llmkit.config.base import describe, did_you_mean
from llmkit.config.sections import SECTIONS
from llmkit.errors import UserError

# Sections are named after their commands (`llmkit train pretrain` reads `pretrain:`). The names they
# had before still work in config files, with one warning naming the new key.
RENAMED_SECTIONS = {"train": "pretrain", "bench": "bench-model", "feedback": "from-feedback", "audit": "bias"}
_warned: set[tuple[str, str]] = set()


def _rename_old_sections(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, body in raw.items():
        new = RENAMED_SECTIONS.get(key) if isinstance(key, str) else None
        if new is None:
            out.setdefault(key, body)
            continue
        if new in raw:
            raise UserError(f"{path}: sections '{key}' and '{new}' are the same section ('{key}' is its old name); keep '{new}'")
        if (str(path), key) not in _warned:
            _warned.add((str(path), key))
            print(f"warning: {path}: section '{key}' is now '{new}' (sections are named after their commands); "
                  f"rename it", file=sys.stderr)
        out[new] = body
    return out


def read_config_file(path: str | Path | None) -> dict[str, Any]:
    """Parse a YAML config file and check its top-level sections; {} when no file is given."""
    return _read_with_lines(path)[0]


KeyLines = dict[tuple[str, ...], int]


def _key_lines(text: str) -> KeyLines:
    """The line (1-based) of every key in a YAML text, by key path: ("sft", "lora", "r") -> 5. An error names
    file:line as compilers do, so an editor jumps to it; the YAML's own node marks give the lines."""
    lines: KeyLines = {}

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = (*prefix, str(key.value))
                lines.setdefault(path, key.start_mark.line + 1)
                walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines.setdefault((*prefix, str(i)), item.start_mark.line + 1)
                walk(item, (*prefix, str(i)))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return lines


MAX_VALUES = 100_000  # values a config file may expand to: a real one has hundreds


def _check_expansion(root: yaml.Node | None, path: Path) -> None:
    """A file whose aliases of aliases expand to more than MAX_VALUES values (a "billion laughs": nine anchors of
    nine aliases each are 9**9 strings) is refused before anything walks it; each node's size is counted once."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 0  # (a node reached again inside itself counts once)
            if isinstance(node, yaml.MappingNode):
                n = 1 + sum(size(k) + size(v) for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                n = 1 + sum(size(item) for item in node.value)
            else:
                n = 1
            sizes[id(node)] = n
        return sizes[id(node)]

    if root is not None and size(root) > MAX_VALUES:
        raise UserError(f"{path}: the YAML expands to {size(root):,} values through its aliases (*name), over the "
                        f"{MAX_VALUES:,} a config file may hold; write the values out instead of aliases of aliases")


def _at(path: Path, lines: KeyLines, *key: str) -> str:
    """`path:line` of the longest prefix of `key` the file has (its section's line at least), else `path`."""
    for n in range(len(key), 0, -1):
        if key[:n] in lines:
            return f"{path}:{lines[key[:n]]}"
    return str(path)


def _read_with_lines(path: str | Path | None) -> tuple[dict[str, Any], KeyLines]:
    if path is None:
        return {}, {}
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--config {path} is a folder; give a YAML file (e.g. llmkit config show pretrain > "
                        "pretrain.yaml writes one to start from)")
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        _check_expansion(yaml.compose(text, Loader=yaml.SafeLoader), path)
        raw = yaml.safe_load(text)
        lines = _key_lines(text) if isinstance(raw, dict) else {}
    except RecursionError:
        raise UserError(f"{path}: the YAML nests thousands of levels deep (or an alias sits inside itself); a config "
                        "file is a few levels of sections and keys") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{where}: invalid YAML ({problem})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text at byte {err.start}") from None
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a config file is a mapping of sections ({', '.join(SECTIONS)}), not {type(raw).__name__}")
    renamed = _rename_old_sections(raw, path)
    # A section under its old name: its keys' lines under the new one too.
    lines.update({(RENAMED_SECTIONS[k[0]], *k[1:]): n for k, n in list(lines.items()) if k[0] in RENAMED_SECTIONS})
    raw = renamed
    for key in raw:
        if key not in SECTIONS:
            raise UserError(f"{_at(path, lines, str(key))}: unknown section '{key}'{did_you_mean(str(key), SECTIONS)}; "
                            f"sections are {', '.join(SECTIONS)}")
        if raw[key] is not None and not isinstance(raw[key], dict):
            raise UserError(f"{_at(path, lines, key)}: section '{key}' must be a mapping of keys, not "
                            f"{type(raw[key]).__name__}")
    # Validate every section, not just the caller's: a typo anywhere in the file is reported.
    for key, body in raw.items():
        validate_section(key, body or {}, source=str(path), lines=lines)
    return {k: (v or {}) for k, v in raw.items()}, lines


def load_section(section: str, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """The validated config of one stage: defaults < file section < flag overrides (None = not given)."""
    section = RENAMED_SECTIONS.get(section, section)
    raw, lines = _read_with_lines(path)
    body = _merged(raw.get(section, {}), overrides or {})
    return validate_section(section, body, source=str(path) if path else None, flags=overrides, lines=lines)


def _merged(body: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`body` with `overrides` laid over it; a nested section (lora) is merged key by key."""
    out = dict(body)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        elif value is not None:
            out[key] = value
    return out


def validate_section(section: str, body: dict[str, Any], source: str | None = None,
                     flags: dict[str, Any] | None = None, lines: KeyLines | None = None) -> Any:
    """`body` as the section's model; an error names `source` (the config file, with the line of the key at fault
    when `lines` has it) unless the value was one of `flags`."""
    model = SECTIONS[section]
    try:
        return model.model_validate(body)
    except ValidationError as err:
        if source and lines:
            first = err.errors()[0]
            key = [str(p) for p in first["loc"]] + ([first["ctx"]["key"]] if first["type"] == "unknown_llama_field" else [])
            source = _at(Path(source), lines, section, *key)
        raise UserError(describe(err, section, model, source, flags)) from None


def render_defaults(section: str) -> str:
    """The section's defaults as YAML with each key's description as a comment above it."""
    section = RENAMED_SECTIONS.get(section, section)
    if section not in SECTIONS:
        raise UserError(f"unknown stage '{section}'{did_you_mean(section, SECTIONS)}; stages: {', '.join(SECTIONS)}")
    lines = [f"{section}:"]
    _render_model(SECTIONS[section](), lines, indent=1)
    return "\n".join(lines) + "\n"


def _render_model(obj: BaseModel, lines: list[str], indent: int) -> None:
    pad = "  " * indent
    for name, field in type(obj).model_fields.items():
        value = getattr(obj, name)
        choices = getattr(field.annotation, "__args__", ())
        if getattr(field.annotation, "__origin__", None) is Literal:
            kind = "one of: " + " | ".join(map(str, choices))
        elif any(getattr(c, "__origin__", None) is Literal for c in choices):  # e.g. bool | Literal["auto"]
            kind = "one of: " + " | ".join(" | ".join(map(str, c.__args__)) if getattr(c, "__origin__", None) is Literal
                                           else "true | false" if c is bool else getattr(c, "__name__", str(c))
                                           for c in choices)
        else:
            kind = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        lines.append(f"{pad}# {field.description} ({kind})")
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            _render_model(value, lines, indent + 1)
        else:
            dumped = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
            dumped = dumped.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{pad}{name}: {dumped}")
