"""Typed requests of the API: OpenAI's shapes for /v1/*, ours for classify, explain and feedback (the responses are in
`serve.responses`, re-exported here).

Unknown fields are ignored, so clients that send `user`, `metadata` or another server's extensions still
work (one a typo away from a field we read is a 400 asking if that was meant); fields we do read are range-checked here (OpenAI's ranges where it bounds them), so a bad value is a 400
naming the field before any work is queued. A field whose value the server could not honour (`best_of` above `n`,
a `suffix`) is refused rather than dropped.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llmkit.serve.request_base import Request, Stops, Text
from llmkit.serve.responses import (  # noqa: F401  (re-exported: the routes read requests and responses as s.X)
    ERRORS,
    STREAMING,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    Classification,
    ClassificationList,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    Embedding,
    EmbeddingList,
    ErrorBody,
    ErrorDetail,
    ExplainResult,
    FeedbackAck,
    Health,
    ModelCard,
    ModelList,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from llmkit.serve.tool_schemas import Tool, ToolCall, ToolChoice


class Sampling(Request):
    model: Text = Field(..., min_length=1, description="a model id from GET /v1/models")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    n: int = Field(1, ge=1, description="choices per prompt, decoded from one prefill (up to the server's --max-n)")
    stop: Text | Stops | None = Field(None, description="up to 4 strings that end the generation")
    seed: int | None = Field(None, ge=0, lt=2**63, description="makes sampling reproducible")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted from the logit of every token "
                                    "already generated: above 0, new topics")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="subtracted from a token's logit once per time "
                                     "it was generated: above 0, less repetition")
    logit_bias: dict[Text, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        None, description="token id (as a string) -> a bias from -100 to 100 added to its logit; -100 bans a token, "
                          "100 all but forces it", json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}})
    ignore_eos: bool = Field(False, description="vLLM's and llama.cpp's extension: go on past the end-of-sequence token "
                             "to max_tokens or a stop string (benchmarks, fixed-length answers)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = Field(None, description="json_object or json_schema: the answer is "
                                                   "decoded under that grammar, so it parses (and validates)")
    guided_json: dict | None = Field(None, description="vLLM's extension: a JSON schema the answer follows")
    guided_regex: Text | None = Field(None, min_length=1, max_length=4096,
                                      description="vLLM's extension: a regular expression the answer matches")
    guided_choice: Annotated[list[Text], Field(min_length=1, max_length=256)] | None = Field(
        None, description="vLLM's extension: the answer is exactly one of these strings")

    @model_validator(mode="after")
    def _one_constraint(self):
        given = [name for name in ("guided_json", "guided_regex", "guided_choice") if getattr(self, name) is not None]
        if self.response_format is not None and self.response_format.type != "text":
            given.insert(0, "response_format")
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} both constrain the answer; send one of them")
        if given and self.ignore_eos:
            raise ValueError(f"ignore_eos with {given[0]}: a constrained answer ends where its grammar does; "
                             "send one of them")
        return self

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, v):
        for key in v or {}:
            if not (key.isascii() and key.isdigit()):
                raise ValueError(f"the key {key!r} is not a token id; keys are token ids as strings, like "
                                 '{"1234": -100}')
        return v

    @property
    def bias(self) -> dict[int, float]:
        return {int(k): b for k, b in (self.logit_bias or {}).items()}

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        return [s for s in ([v] if isinstance(v, str) else (v or [])) if s]

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])


class JsonSchemaFormat(Request):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: Text = Field(..., min_length=1, max_length=64, description="the schema's name")
    description: Text | None = None
    schema_: dict = Field(default_factory=dict, alias="schema", description="the JSON schema the answer follows")
    strict: bool | None = Field(None, description="true: as OpenAI's strict mode, an object that lists its properties "
                                  "takes no others unless the schema says so (additionalProperties); the answer always "
                                  "follows the schema")


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs json_schema: {\"name\": ..., \"schema\": {...}}")
        return self


class StreamOptions(Request):
    include_usage: bool = False


def _free(field: str) -> dict:
    """JSON schema: the field is absent, null, or (response_format) of type text: it constrains nothing."""
    if field == "response_format":
        return {"properties": {field: {"anyOf": [{"type": "null"}, {"properties": {"type": {"const": "text"}}}]}}}
    return {"properties": {field: {"type": "null"}}}


# At most one constraint on the answer (Sampling._one_constraint), said in the schema too: no two of them at once.
_CONSTRAINTS = ("response_format", "guided_json", "guided_regex", "guided_choice")
ONE_CONSTRAINT = [{"anyOf": [_free(a), _free(b)]} for i, a in enumerate(_CONSTRAINTS) for b in _CONSTRAINTS[i + 1:]]
# ...and none with ignore_eos (a constrained answer ends where its grammar does).
ONE_CONSTRAINT += [{"anyOf": [{"properties": {"ignore_eos": {"const": False}}}, _free(c)]} for c in _CONSTRAINTS]


class CompletionRequest(Sampling):
    # Not echo with logprobs (the prompt's log-probabilities are not computed); said in the schema too.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"anyOf": [
        {"properties": {"echo": {"const": False}}}, {"properties": {"logprobs": {"type": "null"}}}], "allOf": ONE_CONSTRAINT})

    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)] = Field(
        ..., description="the text to continue (a list of one string is accepted)")
    max_tokens: int | None = Field(16, ge=1, description="tokens to generate; prompt + max_tokens must fit the context")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5, description="return the log-probability of each generated "
                                 "token and of this many most likely tokens at its position")
    best_of: int | None = Field(None, ge=1, description="accepted when it equals n: the server does not rank extra "
                                "candidates")
    suffix: Text | None = Field(None, max_length=0, description="not supported (insertion needs a fill-in-the-middle "
                                "model): only empty or null")

    @field_validator("best_of")
    @classmethod
    def _best_of_n(cls, v, info: ValidationInfo):
        n = info.data.get("n", 1)
        if v is not None and v != n:
            raise ValueError(f"best_of is {v} and n is {n}: this server returns every choice it generates and does not "
                             "rank extra candidates; leave out best_of, or send best_of equal to n")
        return v

    @field_validator("suffix", mode="before")
    @classmethod
    def _no_suffix(cls, v):  # the max_length above says it in the schema; this says why
        if isinstance(v, str) and v:
            raise ValueError("a suffix (text after the completion) needs a fill-in-the-middle model, which this "
                             "server does not run; leave out suffix")
        return v

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompt(cls, v):  # said plainly, not as "List should have at most 1 item after validation, not 3"
        if isinstance(v, list) and v and all(isinstance(t, int) or isinstance(t, list) for t in v):
            raise ValueError("token-id prompts are not supported here; send the prompt as text")
        if isinstance(v, list) and len(v) > 1:
            raise ValueError(f"one prompt per request ({len(v)} were sent); send them as separate requests")
        return v

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        return v[0] if isinstance(v, list) else v


class TextPart(Request):
    type: Literal["text"]
    text: Text


class Message(Request):
    # Content may be left out or null only by an assistant message that made tool calls (as OpenAI); said in the
    # schema too. Declared after tool_calls so its check sees them.
    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra={"anyOf": [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["tool_calls"], "properties": {"role": {"const": "assistant"},
                                                    "tool_calls": {"type": "array", "minItems": 1}}}]})

    role: Literal["system", "developer", "user", "assistant", "tool"]
    tool_calls: Annotated[list[ToolCall], Field(max_length=64)] | None = Field(
        None, description="assistant: the calls it made (sent back with their results as tool messages)")
    tool_call_id: Text | None = Field(None, max_length=128, description="tool: the call this message answers")
    content: Text | Annotated[list[TextPart], Field(min_length=1)] | None = Field(  # [] was answered as an empty turn
        None, validate_default=True, description="the message's text (or text parts); null only on an assistant "
                                                 "message with tool_calls")

    @field_validator("content")
    @classmethod
    def _content_given(cls, v, info: ValidationInfo):
        # A missing or null content read as "" made an empty turn the model answered: say what is missing instead.
        role = info.data.get("role")
        if v is None and role is not None and not (role == "assistant" and info.data.get("tool_calls")):
            why = "an assistant message may leave it out only when it carries tool_calls" if role == "assistant" else \
                "only an assistant message with tool_calls may leave it out"
            raise ValueError(f"{'an' if role == 'assistant' else 'a'} {role} message needs content; send its text ({why})")
        return v

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(Sampling):
    # top_logprobs > 0 only with logprobs: true; said in the schema too (anyOf), not only checked.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"anyOf": [
        {"properties": {"top_logprobs": {"maximum": 0}}},
        {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]}], "allOf": ONE_CONSTRAINT})

    messages: list[Message] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate (default: up to the context)")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens")
    logprobs: bool = Field(False, description="return the log-probability of each generated token")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="with logprobs: also this many most likely "
                                     "tokens at each position")
    tools: Annotated[list[Tool], Field(max_length=128)] | None = Field(
        None, description="functions the model may call; its calls come back as message.tool_calls")
    tool_choice: ToolChoice | None = Field(None, description="none, auto (default with tools), required, or "
                                           "{type: function, function: {name}}; a required call's arguments follow "
                                           "the function's schema")
    parallel_tool_calls: bool = Field(True, description="false: at most one call per answer (the first); a required "
                                      "call is one call here")

    @field_validator("top_logprobs")
    @classmethod
    def _with_logprobs(cls, v, info: ValidationInfo):
        if v and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true; send both, or drop top_logprobs")
        return v


# Said in the schema (a non-blank text); checked, with its own message, by EmbeddingRequest._texts.
NonBlank = Annotated[Text, Field(json_schema_extra={"pattern": r"\S"})]


class EmbeddingRequest(Request):
    model: Text = Field(..., min_length=1)
    input: NonBlank | Annotated[list[NonBlank], Field(min_length=1, max_length=256)] = Field(
        ..., description="a text or a list of up to 256 texts, none blank, each within the model's context")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="accepted when it is the model's own size: MiniLM-style encoders "
                                                           "were not trained to be cut shorter (Matryoshka)")

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_ids(cls, v):  # said plainly, not as "Input should be a valid string"
        if isinstance(v, list) and v and all(type(t) in (int, list) for t in v):
            raise ValueError("token-id inputs are not supported here; send the input as text")
        return v

    @field_validator("input")
    @classmethod
    def _texts(cls, v):
        texts = [v] if isinstance(v, str) else v
        empty = next((i for i, t in enumerate(texts) if not t.strip()), None)
        if empty is not None:  # OpenAI refuses it too: an empty text's vector is the [CLS][SEP] pair's, not a meaning
            raise ValueError(f"input[{empty}] is blank; send text" if len(texts) > 1 else "input is blank; send text")
        return texts


class ClassifyRequest(Request):
    model: Text = Field(..., min_length=1)
    input: NonBlank | Annotated[list[NonBlank], Field(min_length=1, max_length=256)] = Field(
        ..., description="a text or a list of up to 256 texts, none blank")

    _no_token_ids = field_validator("input", mode="before")(EmbeddingRequest._no_token_ids.__func__)
    _texts = field_validator("input")(EmbeddingRequest._texts.__func__)


class FeedbackRequest(Request):
    # At least one of rating, correction, comment: said in the schema too (anyOf), not only checked.
    model_config = ConfigDict(extra="ignore", json_schema_extra={
        "anyOf": [{"required": ["rating"]}, {"required": ["correction"]},
                  {"required": ["comment"], "properties": {"comment": {"pattern": r"\S"}}}]})  # alone, not blank

    response_id: Text = Field(..., min_length=1, max_length=64, description="the `id` of a completion or chat response")
    # Not nullable: an explicit null would satisfy "required" in the schema and still say nothing.
    rating: Literal[-1, 0, 1] = Field(None, description="1 = good, 0 = neutral (below data from-feedback's default --min-rating 1), -1 = bad")
    # the schema says what the validator below checks (a blank correction is refused), with its own message
    correction: Text = Field(None, max_length=100_000, description="the answer it should have given",
                             json_schema_extra={"pattern": r"\S"})
    comment: Text = Field(None, max_length=10_000)
    choice: int = Field(0, ge=0, le=127, description="which choice of a response asked with n > 1 (its index); the "
                                                     "first by default")

    @field_validator("rating", mode="before")
    @classmethod
    def _not_a_boolean(cls, value):
        # true == 1 to Python: a client's boolean was stored as a thumbs-up, which becomes training data
        if isinstance(value, bool):
            raise ValueError("Input should be -1, 0 or 1, not a boolean")
        return value

    @field_validator("correction")
    @classmethod
    def _a_correction_says_something(cls, value):
        if value is not None and not value.strip():  # stored, then counted by from-feedback as no correction
            raise ValueError("a correction is the answer the model should have given; it is blank")
        return value


class TextMessage(Request):
    """A turn of a conversation to explain: text only (no tool calls or results)."""

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | Annotated[list[TextPart], Field(min_length=1)] = Field(
        ..., description="the message's text (or text parts)")

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content) if isinstance(self.content, list) else self.content


class ExplainRequest(Request):
    # One of input and messages, said in the schema too.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"oneOf": [
        {"required": ["input"], "properties": {"input": {"type": "string"}, "messages": {"type": "null"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}, "input": {"type": "null"}}}]})

    model: Text = Field(..., min_length=1, description="a classifier or causal LM served with the torch backend")
    input: Text | None = Field(None, min_length=1, max_length=20_000, description="the text to explain")
    messages: Annotated[list[TextMessage], Field(min_length=1, max_length=256)] | None = Field(
        None, description="causal LMs, instead of input: a conversation, rendered with the model's chat template as "
                          "/v1/chat/completions renders it (the turn to explain, if any, goes in completion)")
    method: Literal["ig", "occlusion", "shap", "attention"] = Field("ig", description="attribution method")
    target: Text | None = Field(None, max_length=200, description="a label (classifier) or one next token (LM); default: the predicted one")
    completion: Text | None = Field(None, max_length=20_000, description="LMs: explain the log-probability of this continuation")
    steps: int = Field(50, ge=2, le=200, description="Integrated Gradients interpolation steps")
    truncate_completion: bool = Field(False, description="explain the first tokens of a completion past the server's "
                                                         "limit (with a warning) instead of refusing it")

    @model_validator(mode="after")
    def _one_text(self):
        if (self.input is None) == (self.messages is None):
            raise ValueError("send the text to explain as 'input', or a conversation as 'messages' (not both)" if
                             self.input is not None else "send the text to explain as 'input' (or a conversation as "
                             "'messages')")
        return self


Sampling.model_rebuild()
CompletionRequest.model_rebuild()
ChatRequest.model_rebuild()
