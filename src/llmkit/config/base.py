"""The base of every config section, and the one line a mistake in one becomes (a config file's, a flag's, or a
keyword of `SftConfig(...)` in Python): the key path, the value given and what is allowed, with a did-you-mean."""

from __future__ import annotations

import difflib
import os
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from llmkit.config.llama_fields import LLAMA_FIELDS, SIZES
from llmkit.errors import UserError


class _Checked(type(BaseModel)):
    # From Python (`SftConfig(bse=...)` in a notebook) a mistake is the one UserError a config file's is, with its
    # did-you-mean, not pydantic's four-line ValidationError. On the class's call, not in __init__: pydantic calls a
    # custom __init__ for nested sections too, which would name `LoraConfig.r` where a file's error says `sft.lora.r`.
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as err:
            raise UserError(describe(err, cls.__name__, cls)) from None


class Section(BaseModel, metaclass=_Checked):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _paths_and_models_as_text(cls, data: Any) -> Any:
        # A Path where a file goes, and the Model a stage returned where a model goes ("every stage takes a
        # registered name or the Model another stage returned"), as the text a config file would hold
        return {key: _as_text(value) for key, value in data.items()} if isinstance(data, dict) else data

    def __setattr__(self, name: str, value: Any) -> None:
        # `cfg.lr = "abc"` in a notebook: the same one line as SftConfig(lr="abc"), not pydantic's ValidationError
        cls = type(self)
        if name not in cls.model_fields and not name.startswith("_"):
            raise UserError(f"unknown key '{cls.__name__}.{name}'{did_you_mean(name, list(cls.model_fields))}; "
                            f"allowed keys: {', '.join(cls.model_fields)}")
        try:
            super().__setattr__(name, _as_text(value))
        except ValidationError as err:
            raise UserError(describe(err, cls.__name__, cls)) from None

    @classmethod
    def given(cls, cfg: Any, where: str, default: bool = False) -> Any:
        """`cfg` when it is this section, as a stage function takes it (None: the defaults, when `default`); anything
        else is one UserError saying what to pass, not an AttributeError deep inside the stage."""
        if isinstance(cfg, cls):
            return cfg
        if cfg is None and default:
            return cls()
        example = f"{cls.__name__}(**that_dict)" if isinstance(cfg, dict) else f"{cls.__name__}(...)"
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise UserError(f"{where} takes {article} {cls.__name__}, not {type(cfg).__name__}: pass {example} "
                        f"(from llmkit.config import {cls.__name__})")


def _as_text(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_as_text(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    ref = getattr(value, "llmkit_ref", None)  # llmkit.models.io.Model (config sits below models: no import)
    return ref if isinstance(ref, str) else value


def _given(flags: dict[str, Any], loc: list[str]) -> bool:
    value: Any = flags
    for part in loc:
        if not isinstance(value, dict) or value.get(part) is None:
            return False
        value = value[part]
    return True


def describe(err: ValidationError, section: str, model: type[BaseModel], source: str | None = None,
             flags: dict[str, Any] | None = None) -> str:
    """One line for a config's first mistake: the key path (`pretrain.lr`), the value, what is allowed."""
    flags = flags or {}
    errors = err.errors()
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    named, annotation = _field_path(model, loc)
    message = first["msg"].removeprefix("Value error, ")  # our validators' own words
    if len(named) < len(loc) and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        # a value no branch of a union takes (compile: true | false | auto): pydantic names each branch as a key
        # ("sft.compile.bool"); say it of the key, with what every branch expected
        message = " or ".join(dict.fromkeys(e["msg"] for e in errors if [str(p) for p in e["loc"]][:len(named)] == named))
        loc = named
    key_path = ".".join([section, *loc])
    prefix = f"{source}: " if source and not _given(flags, loc) else ""
    if first["type"] == "extra_forbidden":
        owner = _model_at(model, loc[:-1])
        fields = list(owner.model_fields) if owner else []
        hint = did_you_mean(loc[-1], fields)
        return f"{prefix}unknown key '{key_path}'{hint}; allowed keys: {', '.join(fields)}"
    if first["type"] == "unknown_llama_field":  # pretrain.model: {num_hidden_layrs: 2}
        key = first["ctx"]["key"]
        return (f"{prefix}unknown key '{key_path}.{key}'{did_you_mean(key, LLAMA_FIELDS)}; it takes LlamaConfig fields "
                f"such as {', '.join(SIZES)}")
    shown = repr(first.get("input"))
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{prefix}{key_path} = {shown}: {message}"


def _field_path(model: type[BaseModel], loc: list[str]) -> tuple[list[str], Any]:
    """The part of an error's location that names config keys (what follows is a list index, a mapping's key or a
    union branch), and the annotation of the last key named."""
    current: type[BaseModel] | None = model
    annotation: Any = None
    for i, part in enumerate(loc):
        if current is None or part not in current.model_fields:
            return loc[:i], annotation
        annotation = current.model_fields[part].annotation
        current = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return loc, annotation


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
