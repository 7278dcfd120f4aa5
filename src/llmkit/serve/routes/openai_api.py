"""The OpenAI-compatible routes: models, completions, chat completions (streamed or not), embeddings.

Tokenizing, rendering chat templates and encoding vectors are CPU work that grows with the request:
they run in the thread pool, so a megabyte prompt does not hold up every other request (or /health)
while it is read.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

import llmkit.serve.schemas as s
from llmkit.generate import chat_prompt, encode_prompt
from llmkit.serve.auth import authorize
from llmkit.serve.errors import ApiError
from llmkit.serve.handling import bos_prompt, collect, make_answer, stream, usage, usage_wanted
from llmkit.serve.served import embed
from llmkit.serve.state import server_state

router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=s.ERRORS)


def _card(m) -> s.ModelCard:
    return s.ModelCard(id=m.id, created=m.created, kind=m.kind, backend=m.backend, context_length=m.max_len)


@router.get("/models", response_model=s.ModelList)
async def list_models(request: Request):
    return s.ModelList(data=[_card(m) for m in server_state(request).models.values()])


@router.get("/models/{model_id}", response_model=s.ModelCard)
async def get_model(model_id: str, request: Request):
    return _card(server_state(request).model(model_id))


@router.post("/completions", response_model=s.Completion, responses=s.STREAMING)
async def completions(body: s.CompletionRequest, request: Request):
    state = server_state(request)
    served = state.model(body.model, "causal")
    ids = await run_in_threadpool(encode_prompt, served.tokenizer, body.prompt) if body.prompt else bos_prompt(served)
    answer = make_answer(state, served, ids, body, body.max_tokens, [])
    rid = f"cmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    entry = {"model": served.id, "model_ref": served.model.ref, "endpoint": "completion", "prompt": body.prompt}
    head = body.prompt if body.echo else ""
    if body.stream:
        def chunk(text, finish, usage=None):
            return s.Completion(id=rid, created=created, model=served.id, usage=usage,
                                choices=[s.CompletionChoice(text=text, finish_reason=finish)] if usage is None or text else [])
        return stream(state, served, answer, request, rid, entry, chunk, first=head, include_usage=usage_wanted(body))
    text, done = await collect(state, served, answer, request, rid, entry)
    return s.Completion(id=rid, created=created, model=served.id, usage=usage(done),
                        choices=[s.CompletionChoice(text=head + text, finish_reason=done.finish_reason)])


@router.post("/chat/completions", response_model=s.ChatCompletion, responses=s.STREAMING)
async def chat_completions(body: s.ChatRequest, request: Request):
    state = server_state(request)
    served = state.model(body.model, "causal")
    ids, end_ids, logged = await run_in_threadpool(_chat_ids, served, body)
    answer = make_answer(state, served, ids, body, body.max_completion_tokens or body.max_tokens, end_ids)
    rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    entry = {"model": served.id, "model_ref": served.model.ref, "endpoint": "chat", "prompt": logged}
    if body.stream:
        def chunk(text, finish, usage=None, role=False):
            delta = s.ChatDelta(role="assistant", content=text) if role else s.ChatDelta(content=text or None)
            choices = [] if usage is not None else [s.ChatChunkChoice(delta=delta, finish_reason=finish)]
            return s.ChatCompletionChunk(id=rid, created=created, model=served.id, choices=choices, usage=usage)
        return stream(state, served, answer, request, rid, entry, chunk, first="", role=True,
                      include_usage=usage_wanted(body))
    text, done = await collect(state, served, answer, request, rid, entry)
    return s.ChatCompletion(id=rid, created=created, model=served.id, usage=usage(done),
                            choices=[s.ChatChoice(message=s.ChatMessageOut(content=text), finish_reason=done.finish_reason)])


def _chat_ids(served, body: s.ChatRequest) -> tuple[list[int], list[int], str]:
    """(prompt ids, ids that end the turn, the messages as logged): the chat template rendered and tokenized."""
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in body.messages]
    try:
        prompt, end_ids = chat_prompt(served.tokenizer, messages)
    except Exception as err:  # a template that rejects the roles or their order (jinja raises)
        raise ApiError(400, f"the model's chat template rejected the messages: {err}", param="messages") from None
    return encode_prompt(served.tokenizer, prompt), end_ids, json.dumps(messages, ensure_ascii=False)


@router.post("/embeddings", response_model=s.EmbeddingList)
async def embeddings(body: s.EmbeddingRequest, request: Request):
    served = server_state(request).model(body.model, "encoder")
    vectors, tokens = await run_in_threadpool(embed, served, body.input)
    if body.encoding_format == "base64":
        vectors = await run_in_threadpool(_base64, vectors)
    return s.EmbeddingList(model=served.id, data=[s.Embedding(index=i, embedding=v) for i, v in enumerate(vectors)],
                           usage=s.Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens))


def _base64(vectors: list[list[float]]) -> list[str]:
    import base64

    import numpy as np

    return [base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode() for v in vectors]
