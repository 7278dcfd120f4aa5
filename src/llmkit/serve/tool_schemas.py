"""OpenAI's shapes for tool calling: `tools` and `tool_choice` in a chat request, `tool_calls` in an
assistant message (sent back in the next request, or returned in a reply), and `tool` role messages.

Kept beside `schemas` (which imports them) so each file holds one part of the API. Arguments travel as
a JSON string, as OpenAI's do; `serve.tools` parses them where a chat template needs an object.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _name_as_openai_takes_it(name: str) -> str:
    if not _NAME.fullmatch(name):
        # a name in Chinese (查询天气) was refused with pydantic's "String should match pattern '^[A-Za-z0-9_.\-]+$'"
        raise ValueError(f"function name {name!r}: names use ASCII letters, digits, _ . and - (OpenAI's rule); put words "
                         "in other scripts in the function's description")
    return name


# Names as OpenAI's API accepts them: what a template, a grammar and a client all handle alike. The pattern stays in
# the OpenAPI schema for clients; the check is ours, to say the rule in words.
FunctionName = Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"pattern": _NAME.pattern}),
                         AfterValidator(_name_as_openai_takes_it)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)  # as request_base.Request: wrong JSON types are 400s


class FunctionDefinition(_Request):
    name: FunctionName
    description: str | None = Field(None, max_length=10_000)
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}},
                             description="a JSON schema of the arguments")
    strict: bool | None = Field(None, description="accepted; a required call always follows the schema here, "
                                  "with the listed arguments only unless it says otherwise (additionalProperties)")


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionRef(_Request):
    name: FunctionName


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionRef


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(_Request):
    name: FunctionName
    arguments: str = Field("{}", max_length=100_000, description="the arguments as a JSON object, in a string")


class ToolCall(_Request):
    """A call as an assistant message carries it (in a reply, or sent back in the conversation)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(..., min_length=1, max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallDelta(BaseModel):
    """A call in a stream chunk: its index among the reply's calls; id, type and name with its first piece."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: dict | None = None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}
