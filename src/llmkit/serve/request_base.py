"""The base of every API request: strict JSON types, valid Unicode in every string, whole floats as integers where an
integer goes, and a field one typo from a known one refused (the request classes are in `serve.schemas`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError


def _valid_unicode(value):
    # JSON may carry a lone UTF-16 surrogate ("\\ud800"), which no tokenizer or UTF-8 encoder accepts:
    # refuse it here, naming the field, rather than fail deep inside the model code. Before the str
    # validator, whose own refusal of it (with a length limit) says only "unable to parse".
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise PydanticCustomError(
            "unpaired_surrogate", "contains an unpaired surrogate ({code}) at character {at}; send valid Unicode text "
            "(a surrogate is only valid as half of an escaped pair such as \\ud83d\\ude00)",
            {"code": f"\\u{ord(value[err.start]):04x}", "at": err.start}) from None
    return value


# Every string a client sends is Text: valid Unicode, checked before anything reads it.
Text = Annotated[str, BeforeValidator(_valid_unicode)]

# Limits as schema constraints (not only validators), so the OpenAPI schema says what is accepted.
Stops = Annotated[list[Text], Field(max_length=4)]


def _refuse_near_misses(model: type[BaseModel], data: dict) -> None:
    """An unknown field one typo away from a known one (`max_token`, `temprature`) is a 400 naming both: ignored, it
    ran a full-length or default-temperature answer without a word. Other unknown fields stay ignored (other servers'
    extensions); 0.85 keeps vLLM's `min_tokens` (0.8 from `max_tokens`) among those."""
    import difflib

    known = {name for name, info in model.model_fields.items() for name in (name, info.alias) if name}
    for key in data:
        if isinstance(key, str) and key not in known and (close := difflib.get_close_matches(key, known, 1, 0.85)):
            raise PydanticCustomError("unknown_field", "unknown field '{field}': did you mean '{close}'?",
                                      {"field": key, "close": close[0]})


def _integer_fields(model: type[BaseModel]) -> frozenset[str]:
    """The fields (and aliases) of `model` typed int or int | None."""
    import typing

    cached = _INTEGER_FIELDS.get(model)
    if cached is None:
        names = set()
        for name, info in model.model_fields.items():
            kinds = typing.get_args(info.annotation) or (info.annotation,)
            if int in kinds:
                names.update({name, info.alias} - {None})
        cached = _INTEGER_FIELDS[model] = frozenset(names)
    return cached


_INTEGER_FIELDS: dict[type, frozenset[str]] = {}


class Request(BaseModel):
    # strict: "stream": "yes", "max_tokens": "5" and "n": true are 400s naming the field, as OpenAI answers them,
    # rather than guesses (an int is still a float)
    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _whole_numbers(cls, data):
        """2.0 where an integer goes is the integer: JSON Schema's `integer` (what the OpenAPI schema says) takes it."""
        if not isinstance(data, dict):
            return data
        _refuse_near_misses(cls, data)
        ints = _integer_fields(cls)
        return {k: int(v) if k in ints and isinstance(v, float) and v.is_integer() else v for k, v in data.items()}
