"""Typed responses of the API: OpenAI's shapes for /v1/*, ours for classify, explain and feedback, and the error
body. The requests are in `serve.schemas`, which re-exports these so that the routes read one namespace (`s.X`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from llmkit.serve.tool_schemas import ToolCall, ToolCallDelta


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmkit"
    kind: Literal["causal", "classifier", "encoder"]
    backend: str
    context_length: int | None = None
    parent: str | None = Field(None, description="a LoRA adapter served on a base: the base's id")
    model_ref: str | None = Field(None, description="the registered model served (name:vN), as resolved when the server "
                                  "started: an alias moved since (llmkit promote) takes effect at the next start")
    model_id: str | None = Field(None, description="its registry id")
    explainable: bool = Field(False, description="POST /v1/explain takes it (a classifier or causal LM with a torch module of its own)")
    special_tokens: list[str] | None = Field(None, description="a causal LM's special tokens: written in a message, each is read as itself (a turn marker ends the turn), so an application passing untrusted text on removes them")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: parallel lists, one entry per generated token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None  # the token's UTF-8 bytes, which may be part of a character


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    """What a stream chunk adds to the reply; fields not sent are left out (OpenAI's `{}` last delta)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler):
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Embedding]
    usage: Usage


class Classification(BaseModel):
    index: int
    label: str
    probabilities: dict[str, float]


class ClassificationList(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]
    usage: Usage


class ExplainResult(BaseModel):
    model_config = ConfigDict(extra="allow")  # method-specific fields: convergence_delta, attention rollout, ...

    object: Literal["explanation"] = "explanation"
    model: str
    method: str
    tokens: list[str]
    scores: list[float]
    normalized: list[float]
    special: list[bool]
    target: str
    probability: float
    aopc: float
    aopc_random: float
    seconds: float
    warnings: list[str]


class FeedbackAck(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    response_id: str


class Health(BaseModel):
    status: Literal["ok", "draining"] = "ok"  # draining: the server is stopping (503), send new requests elsewhere
    models: list[str]
    queue_depth: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# OpenAPI documentation of the error and streaming responses, shared by the routers.
ERRORS = {code: {"model": ErrorBody} for code in (400, 401, 404, 408, 413, 429)}
STREAMING = {200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}}
