"""The OpenAI-compatible routes: models, completions, chat completions (streamed or not), embeddings.

Tokenizing, rendering chat templates and encoding vectors are CPU work that grows with the request:
they run in the thread pool, so a megabyte prompt does not hold up every other request (or /health)
while it is read.
"""

from __future__ import annotations

import codecs
import json
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

import llmkit.serve.schemas as s
from llmkit.generate import chat_prompt, encode_prompt
from llmkit.serve.auth import authorize
from llmkit.serve.errors import ApiError
from llmkit.serve.handling import bos_prompt, collect, make_answers, stream, token_text, usage, usage_wanted
from llmkit.serve.sampled import Logprob
from llmkit.serve.served import embed, explainable
from llmkit.serve.state import server_state
from llmkit.serve.structured import grammar_for
from llmkit.serve.tool_schemas import ToolCallDelta
from llmkit.serve.tools import CallStream, ToolUse, chat_messages, tool_use

router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=s.ERRORS)


def _card(m) -> s.ModelCard:
    return s.ModelCard(id=m.id, created=m.created, kind=m.kind, backend=m.backend, context_length=m.max_len,
                       parent=m.parent, explainable=explainable(m), special_tokens=_special_tokens(m),
                       model_ref=m.model.ref if m.model.id else None, model_id=m.model.id)


def _special_tokens(m) -> list[str] | None:
    """The tokens the prompt's tokenization matches whole wherever they appear (added special tokens, SmolLM2's
    `<|im_end|>` and its code-corpus markers): what an application must strip from text it did not write."""
    if m.kind != "causal":
        return None
    added = getattr(m.tokenizer, "added_tokens_decoder", None) or {}
    names = {t.content for t in added.values() if getattr(t, "special", False)}
    return sorted(names | set(getattr(m.tokenizer, "all_special_tokens", None) or [])) or None


@router.get("/models", response_model=s.ModelList)
async def list_models(request: Request):
    return s.ModelList(data=[_card(m) for m in server_state(request).models.values()])


@router.get("/models/{model_id:path}", response_model=s.ModelCard)  # a served name may hold a slash (org/model)
async def get_model(model_id: str, request: Request):
    return _card(server_state(request).model(model_id))


@router.post("/completions", response_model=s.Completion, responses=s.STREAMING)
async def completions(body: s.CompletionRequest, request: Request):
    state = server_state(request)
    served = state.model(body.model, "causal")
    if body.echo and body.logprobs is not None:
        raise ApiError(400, "echo with logprobs would need the prompt's log-probabilities, which this server does not "
                       "compute; drop echo or logprobs", param="echo", code="invalid_value")
    ids = await run_in_threadpool(encode_prompt, served.tokenizer, body.prompt) if body.prompt else bos_prompt(served)
    grammar = await run_in_threadpool(grammar_for, served, body)
    answers = make_answers(state, served, ids, body, body.max_tokens, [], body.logprobs, grammar)
    rid = f"cmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    entry = {"model": served.id, "model_ref": served.model.ref, "endpoint": "completion", "prompt": body.prompt}
    head = body.prompt if body.echo else ""
    wants = body.logprobs is not None
    if body.stream:
        so_far = [TextSoFar() for _ in range(body.n)]  # each choice's text so far: its next token's text_offset

        def chunk(text, finish, *, index=0, logprobs=(), usage=None):
            lp = None
            if wants and logprobs:
                lp = _completion_logprobs(served.tokenizer, logprobs, so_far[index])
            choices = [s.CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=lp)]
            return s.Completion(id=rid, created=created, model=served.id, usage=usage,
                                choices=choices if usage is None or text else [])
        return stream(state, served, answers, request, rid, entry, chunk, first=head, include_usage=usage_wanted(body))
    answers = await collect(state, served, answers, request, rid, entry)
    return s.Completion(id=rid, created=created, model=served.id, usage=usage(answers), choices=[
        s.CompletionChoice(index=i, text=head + a.whole, finish_reason=a.done.finish_reason,
                           logprobs=_completion_logprobs(served.tokenizer, a.logprobs, TextSoFar()) if wants else None)
        for i, a in enumerate(answers)])


@router.post("/chat/completions", response_model=s.ChatCompletion, responses=s.STREAMING)
async def chat_completions(body: s.ChatRequest, request: Request):
    state = server_state(request)
    served = state.model(body.model, "causal")
    use = tool_use(served.tokenizer, body)
    ids, end_ids, logged = await run_in_threadpool(_chat_ids, served, body, use)
    grammar = await run_in_threadpool(grammar_for, served, body, use.call_schema() if use and use.required else None)
    # ignore_eos passes the end of turn too, as vLLM passes the generation config's EOS ids: SmolLM2's is its EOS
    answers = make_answers(state, served, ids, body, body.max_completion_tokens or body.max_tokens,
                           [] if body.ignore_eos else end_ids, (body.top_logprobs or 0) if body.logprobs else None, grammar)
    rid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    entry = {"model": served.id, "model_ref": served.model.ref, "endpoint": "chat", "prompt": logged}
    calling = use is not None and use.offered
    if body.stream:
        calls = [CallStream(use) for _ in answers] if calling else []

        def chunk(text, finish, *, index=0, logprobs=(), usage=None, role=False):
            delta = s.ChatDelta(role="assistant", content=text) if role else s.ChatDelta(content=text or None)
            if calls and not role and usage is None:
                delta, finish = _call_delta(calls[index], text, finish)
            lp = _chat_logprobs(served.tokenizer, logprobs) if body.logprobs and logprobs else None
            if usage is None and not role and finish is None and lp is None and delta.content is None and not delta.tool_calls:
                return None  # text held back while it may be a tool call: no empty chunk per token
            choices = [] if usage is not None else [s.ChatChunkChoice(index=index, delta=delta, finish_reason=finish,
                                                                      logprobs=lp)]
            return s.ChatCompletionChunk(id=rid, created=created, model=served.id, choices=choices, usage=usage)
        return stream(state, served, answers, request, rid, entry, chunk, first="", role=True,
                      include_usage=usage_wanted(body))
    answers = await collect(state, served, answers, request, rid, entry)
    choices = []
    for i, a in enumerate(answers):
        content, tool_calls = use.parse(a.whole) if calling else (a.whole, [])
        choices.append(s.ChatChoice(
            index=i, message=s.ChatMessageOut(content=content, tool_calls=tool_calls or None),
            finish_reason=_finish(use if calling else None, tool_calls, a.done.finish_reason),
            logprobs=_chat_logprobs(served.tokenizer, a.logprobs) if body.logprobs else None))
    return s.ChatCompletion(id=rid, created=created, model=served.id, usage=usage(answers), choices=choices)


def _call_delta(calls: CallStream, text: str, finish: str | None) -> tuple[s.ChatDelta, str | None]:
    """A streamed choice's delta under tool use: text that cannot be a call at once, the calls at the end."""
    if finish is None:
        return s.ChatDelta(content=calls.push(text) or None), None
    rest, found = calls.finish()
    deltas = [ToolCallDelta(index=k, id=c.id, type="function", function=c.function.model_dump())
              for k, c in enumerate(found)]
    return s.ChatDelta(content=rest, tool_calls=deltas or None), _finish(calls.use, found, finish)


def _finish(use: ToolUse | None, calls: list, finish: str) -> str:
    """"tool_calls" when the answer made calls, but "length" for a required call the token limit cut short
    (as OpenAI: the client knows its arguments may not be whole)."""
    if use is not None and use.required and finish == "length":
        return finish
    return "tool_calls" if calls else finish


def _chat_logprobs(tokenizer, entries: list[tuple[int, Logprob]]) -> s.ChatLogprobs:
    def one(tok: int, logprob: float) -> dict:
        text, raw = token_text(tokenizer, tok)
        return {"token": text, "logprob": logprob, "bytes": list(raw)}

    return s.ChatLogprobs(content=[s.TokenLogprob(**one(tok, lp.logprob), top_logprobs=[one(t, v) for t, v in lp.top])
                                   for tok, lp in entries])


class TextSoFar:
    """Characters of a choice's text so far, from its tokens' bytes: a byte-level BPE token may hold part of a
    character (Chinese: three bytes over two tokens), which the text shows only once whole."""

    def __init__(self) -> None:
        self.chars, self._decoder = 0, codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, raw: bytes) -> None:
        self.chars += len(self._decoder.decode(raw))


def _legacy_token(tokenizer, tok: int) -> tuple[str, bytes]:
    """A token as the legacy logprobs name it: its text, or for part of a character OpenAI's `bytes:\\xe5\\x9b`
    (two different partial tokens both read U+FFFD, and as top_logprobs keys one replaced the other)."""
    text, raw = token_text(tokenizer, tok)
    if "\ufffd" in text and raw != text.encode():
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw
    return text, raw


def _completion_logprobs(tokenizer, entries: list[tuple[int, Logprob]], so_far: TextSoFar) -> s.CompletionLogprobs:
    """The legacy shape; each position's top_logprobs also holds the sampled token (up to logprobs + 1, as OpenAI).
    text_offset counts characters of the returned text (`so_far` carries a choice's count from chunk to chunk)."""
    tokens, offsets, tops = [], [], []
    for tok, lp in entries:
        shown, raw = _legacy_token(tokenizer, tok)
        tokens.append(shown)
        offsets.append(so_far.chars)
        so_far.add(raw)
        top = {_legacy_token(tokenizer, t)[0]: v for t, v in lp.top}
        top.setdefault(shown, lp.logprob)
        tops.append(top)
    return s.CompletionLogprobs(tokens=tokens, token_logprobs=[lp.logprob for _, lp in entries], top_logprobs=tops,
                                text_offset=offsets)


def _chat_ids(served, body: s.ChatRequest, use: ToolUse | None) -> tuple[list[int], list[int], str]:
    """(prompt ids, ids that end the turn, the messages as logged): the chat template rendered and tokenized."""
    messages, tools = chat_messages(body, use)
    try:
        prompt, end_ids = chat_prompt(served.tokenizer, messages, tools)
    except Exception as err:  # a template that rejects the roles or their order (jinja raises)
        raise ApiError(400, f"the model's chat template rejected the messages: {err}", param="messages") from None
    return encode_prompt(served.tokenizer, prompt), end_ids, json.dumps(messages, ensure_ascii=False)


@router.post("/embeddings", response_model=s.EmbeddingList)
async def embeddings(body: s.EmbeddingRequest, request: Request):
    served = server_state(request).model(body.model, "encoder")
    size = served.net.config.hidden_size
    if body.dimensions is not None and body.dimensions != size:
        raise ApiError(400, f"'dimensions' = {body.dimensions}: {served.id} gives {size}-dimension vectors and was not "
                            f"trained to be cut shorter; leave out 'dimensions' or send {size}", param="dimensions",
                       code="invalid_value")
    vectors, tokens = await run_in_threadpool(embed, served, body.input)
    if body.encoding_format == "base64":
        vectors = await run_in_threadpool(_base64, vectors)
    return s.EmbeddingList(model=served.id, data=[s.Embedding(index=i, embedding=v) for i, v in enumerate(vectors)],
                           usage=s.Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens))


def _base64(vectors: list[list[float]]) -> list[str]:
    import base64

    import numpy as np

    return [base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode() for v in vectors]
