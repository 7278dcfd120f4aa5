"""From a validated request to its answer: the generation job, then the whole text or an SSE stream.

The routes in app.py check what they can from the body; here the prompt is checked against the
model's context and the server's limits, the job goes to the model's engine (429 when its queue is
full), and the engine's events become a response, recorded for feedback and metrics when done.
The engine sends token ids; they become text here (`Answer`). Stop strings go to the engine as a
condition on ids (a second `TextStream` in the scheduler's thread), so both sides stop on the same token.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import SQLAlchemyError
from sse_starlette.sse import EventSourceResponse

import llmkit.serve.schemas as s
from llmkit.data.tokenizer import byte_alphabet
from llmkit.registry import RegistryUnavailable
from llmkit.runtime.detokenize import TextStream
from llmkit.runtime.grammar import Grammar, TokenConstraint
from llmkit.runtime.sampling import Sampler
from llmkit.serve.engine import Event, Job, QueueFull
from llmkit.serve.errors import ApiError
from llmkit.serve.sampled import Logprob
from llmkit.serve.served import ServedModel
from llmkit.serve.structured import requested

if TYPE_CHECKING:
    from llmkit.serve.state import ServerState


def bos_prompt(served: ServedModel) -> list[int]:
    bos = served.tokenizer.bos_token_id
    if bos is None:
        raise ApiError(400, "'prompt' is empty and the model has no BOS token to start from", param="prompt")
    return [bos]


@dataclass
class Answer:
    """A request's side of one choice's job: the ids the engine sends become text here."""

    job: Job
    text: TextStream
    ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, Logprob]] = field(default_factory=list)  # (id, log-probability) per token of the text
    done: Event | None = None
    constrained_by: str | None = None  # the request field whose grammar the answer follows, named if it fails

    def take(self, event: Event) -> tuple[str, list[tuple[int, Logprob]], Event | None]:
        """The text and token log-probabilities an engine event adds, and the final event once the answer is complete."""
        if event.kind == "done":
            self.done = event
            return self.text.finish(), [], event
        piece, added = "", []
        for k, tok in enumerate(event.ids):
            if self.text.stopped:  # the engine's stop check ended the row on this same token
                break
            self.ids.append(tok)
            piece += self.text.push(self.ids)
            if event.logprobs is not None and tok not in self.job.eos:  # an end token is not part of the text
                added.append((tok, event.logprobs[k]))
        self.logprobs += added
        return piece, added, None

    @property
    def whole(self) -> str:
        """All the text sent so far (the whole answer once `done`)."""
        return self.text.emitted


@functools.lru_cache(maxsize=1 << 16)
def token_text(tokenizer, tok: int) -> tuple[str, bytes]:
    """One token as logprobs show it: its text and its own bytes. A byte-level BPE token may hold part of a
    character (its text then shows U+FFFD), so its bytes come from the token's pieces, not from the text."""
    text = tokenizer.decode([tok], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if "\ufffd" not in text:
        return text, text.encode()
    piece = tokenizer.convert_ids_to_tokens(tok) or ""
    if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):  # SentencePiece's byte fallback
        return text, bytes([int(piece[3:5], 16)])
    table = {c: b for b, c in byte_alphabet().items()}
    if piece and all(c in table for c in piece):  # GPT-2-style byte-level BPE
        return text, bytes(table[c] for c in piece)
    return text, text.encode()


def stop_check(tokenizer, stops: list[str]):
    """The engine's view of stop strings: a condition on the generated ids, run in the scheduler's thread."""
    if not any(stops):
        return None
    watcher = TextStream(tokenizer, stops)

    def stopped(ids: list[int]) -> bool:
        watcher.push(ids)
        return watcher.stopped

    return stopped


def make_answers(state: ServerState, served: ServedModel, ids: list[int], body: s.Sampling, max_tokens: int | None,
                 stop_ids: list[int], logprobs: int | None = None, grammar: Grammar | None = None) -> list[Answer]:
    """The request's `n` choices: one job whose forks are the other choices, each with its own sampler
    (seeded seed, seed + 1, ...), all reporting to one queue."""
    context = served.max_len or 10**9
    limit = state.cfg.max_tokens
    if max_tokens is not None and max_tokens > limit:
        raise ApiError(400, f"max_tokens is {max_tokens}, over this server's limit of {limit}", param="max_tokens",
                       code="invalid_value")
    _check_n(state, served, body.n)
    bias = _logit_bias(served, body)
    if len(ids) >= context:
        raise ApiError(400, f"the prompt is {len(ids)} tokens and the model's context is {context}; shorten it",
                       param="messages" if isinstance(body, s.ChatRequest) else "prompt", code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = min(limit, context - len(ids))
    elif len(ids) + max_tokens > context:
        raise ApiError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the model's context "
                       f"of {context}; ask for at most {context - len(ids)} tokens", param="max_tokens",
                       code="context_length_exceeded")
    events: asyncio.Queue = asyncio.Queue()
    deadline, loop = time.perf_counter() + state.cfg.timeout, asyncio.get_running_loop()
    answers = []
    # A required tool call's grammar is the only one a request with no constraint field can have.
    constrained_by = None if grammar is None else (requested(body) or (None, None, "tools"))[2]
    for i in range(body.n):
        eos = (set() if body.ignore_eos else served.eos) | set(stop_ids)
        # Structured output: each choice walks the grammar on its own; it may end only where the grammar is complete.
        sampler = Sampler(len(served.tokenizer), ids, temperature=body.temperature, top_p=body.top_p,
                          seed=None if body.seed is None else body.seed + i, logit_bias=bias,
                          presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                          constraint=None if grammar is None else TokenConstraint(grammar), eos_ids=sorted(eos))
        job = Job(ids=ids, max_new=max_tokens, sampler=sampler, eos=eos,
                  stop_check=stop_check(served.tokenizer, body.stops), deadline=deadline, loop=loop, events=events,
                  index=i, logprobs=logprobs, adapter=served.adapter_id)
        answers.append(Answer(job, TextStream(served.tokenizer, body.stops), constrained_by=constrained_by))
    answers[0].job.forks = [a.job for a in answers[1:]]
    return answers


def _logit_bias(served: ServedModel, body: s.Sampling) -> dict[int, float]:
    """The request's logit_bias as {token id: bias}, every id one of the model's (the engine samples every backend's
    logits itself, so the bias and both penalties apply on torch, llama.cpp and ONNX alike)."""
    bias, size = body.bias, len(served.tokenizer)
    unknown = next((tok for tok in bias if tok >= size), None)
    if unknown is not None:
        raise ApiError(400, f"logit_bias: token id {unknown} is not in the vocabulary of '{served.id}' (ids 0 to "
                       f"{size - 1}); send ids of this model's tokenizer", param="logit_bias", code="invalid_value")
    return bias


def _check_n(state: ServerState, served: ServedModel, n: int) -> None:
    limit = min(state.cfg.max_n, served.engine.max_choices)
    if n > limit:
        why = "--max-n" if limit == state.cfg.max_n else "the choices of one request share one worker's batch, --max-batch"
        raise ApiError(400, f"n is {n}, over this server's limit of {limit} choices per request ({why}); ask for "
                       f"at most {limit}", param="n", code="invalid_value")


def usage(answers: list[Answer]) -> s.Usage:
    """The prompt once (the choices share it), and every choice's completion tokens."""
    prompt = answers[0].done.prompt_tokens
    completion = sum(a.done.completion_tokens for a in answers)
    return s.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def usage_wanted(body: s.Sampling) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _submit(state: ServerState, served: ServedModel, answers: list[Answer], request: Request) -> None:
    # Time to first token is the client's wait: from the request's arrival (app.Observed), so the chat template, the
    # tokenizer and a grammar's compile before the engine count too, not from the job's making
    arrived = getattr(request.state, "arrived", None)
    for answer in answers if arrived is not None else ():
        answer.job.submitted = arrived
    try:
        served.engine.submit(answers[0].job)
    except QueueFull:
        state.metrics.rejected.labels("queue_full").inc()
        raise ApiError(429, f"the server is busy: {served.engine.max_queue} requests are queued for '{served.id}'; retry shortly",
                       code="queue_full", headers={"Retry-After": "1"}) from None


def _cancel(answers: list[Answer]) -> None:
    for answer in answers:
        answer.job.cancelled = True  # no-op once done; frees the slot if the handler was cancelled


def _finished(state: ServerState, served: ServedModel, rid: str, entry: dict, answers: list[Answer]) -> None:
    """Metrics count every choice's tokens (the prompt once); the log and feedback record the first choice."""
    counts = usage(answers)
    state.metrics.tokens.labels(served.id, "prompt").inc(counts.prompt_tokens)
    state.metrics.tokens.labels(served.id, "completion").inc(counts.completion_tokens)
    first = answers[0].done
    if first.first_token_seconds is not None:
        state.metrics.ttft.labels(served.id).observe(first.first_token_seconds)
    text = answers[0].whole
    # every choice's text: feedback names the one it rates (`choice`), the first by default
    entry = {**entry, "response": text, "responses": [a.whole for a in answers]}
    state.remember(rid, entry)
    if state.cfg.log_requests:
        tokens = {"prompt_tokens": counts.prompt_tokens, "completion_tokens": counts.completion_tokens}
        extra = {"kind": "request", "endpoint": entry["endpoint"], "usage": tokens, "model_ref": entry["model_ref"]}
        if len(answers) > 1:  # the response recorded is choice 0's; the others' text for feedback on them
            extra["choices"] = len(answers)
            extra["choices_text"] = [a.whole for a in answers]
        try:
            state.registry.add_feedback(served.id, response_id=rid, prompt=entry["prompt"], response=text, extra=extra)
        except (SQLAlchemyError, RegistryUnavailable) as err:
            # Best effort: the answer is the client's whatever becomes of its log row (a registry outage failed every
            # completion with a 500 after it was generated); counted in /metrics, said once per outage.
            state.metrics.log_errors.inc()
            if not state.log_failing:
                logging.getLogger("llmkit.serve").warning("--log-requests: the registry refused a request's row (%s); "
                                                          "answers go on, unlogged, until it is back",
                                                          " ".join(str(getattr(err, "orig", err)).split())[:200])
            state.log_failing = True
        else:
            state.log_failing = False


def timeout_error(timeout: float, fewer: str = "tokens") -> ApiError:
    return ApiError(408, f"the request took longer than the server's timeout of {timeout:g} s; ask for fewer "
                    f"{fewer} or retry when the server is less busy", type="timeout_error", code="timeout")


def _failed(event: Event, timeout: float, constrained_by: str | None) -> ApiError:
    if event.finish_reason == "timeout":
        return timeout_error(timeout)
    if event.code == "invalid_grammar":  # the request's own schema or regex, not the server
        return ApiError(400, f"{constrained_by}: the grammar engine could not follow it partway through the answer "
                        f"({event.message}); simplify it", param=constrained_by, code="invalid_grammar")
    return ApiError(503, event.message, type="server_error", code="engine_error")


async def collect(state: ServerState, served: ServedModel, answers: list[Answer], request: Request, rid: str,
                  entry: dict) -> list[Answer]:
    """Every choice's whole answer (each `done`), once the last one is complete."""
    _submit(state, served, answers, request)
    events = answers[0].job.events
    watcher = asyncio.create_task(_watch_disconnect(request, answers))
    try:
        while any(a.done is None for a in answers):
            event = await events.get()
            if event.kind == "disconnected":
                raise ApiError(400, "client disconnected")
            if event.kind == "error":
                raise _failed(event, state.cfg.timeout, answers[0].constrained_by)
            answers[event.index].take(event)
        await run_in_threadpool(_finished, state, served, rid, entry, answers)
        return answers
    finally:
        watcher.cancel()
        _cancel(answers)


async def _watch_disconnect(request: Request, answers: list[Answer]) -> None:
    """Beside a whole-answer request, whatever the events do: once its client has gone, cancel the jobs (the
    scheduler drops them at its next step and counts it) and wake the handler waiting for events.

    The body has been read, so the next ASGI message is the disconnect; this waits for it rather than
    polling `request.is_disconnected()`, whose instantly cancelled receive never sees the message through
    an http middleware's task group (and so never reported a disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    _cancel(answers)
    answers[0].job.events.put_nowait(Event("disconnected"))


def stream(state: ServerState, served: ServedModel, answers: list[Answer], request: Request, rid: str, entry: dict,
           chunk, first: str, include_usage: bool, role: bool = False) -> EventSourceResponse:
    """SSE chunks from `chunk(text, finish, index=, logprobs=, usage=, role=)`: each choice's own, tagged with its index;
    a chunk of None is not sent."""
    _submit(state, served, answers, request)
    queue = answers[0].job.events

    async def events() -> AsyncIterator[dict]:
        try:
            for answer in answers:
                if role:
                    yield {"data": _dump(chunk("", None, index=answer.job.index, role=True))}
                elif first:
                    yield {"data": _dump(chunk(first, None, index=answer.job.index))}
            failed = None
            while failed is None and any(a.done is None for a in answers):
                for event in await _pending(queue):
                    if event.kind == "error":
                        failed = _failed(event, state.cfg.timeout, answers[0].constrained_by)
                        break
                    piece, logprobs, done = answers[event.index].take(event)
                    if (piece or logprobs) and (out := chunk(piece, None, index=event.index, logprobs=logprobs)) is not None:
                        yield {"data": _dump(out)}
                    if done is not None:
                        yield {"data": _dump(chunk("", done.finish_reason, index=event.index))}
            if failed is not None:
                yield {"data": json.dumps({"error": {"message": failed.message, "type": failed.type,
                                                     "param": failed.param, "code": failed.code}})}
            else:
                if include_usage:
                    yield {"data": _dump(chunk("", None, usage=usage(answers)))}
                await run_in_threadpool(_finished, state, served, rid, entry, answers)
            yield {"data": "[DONE]"}
        finally:
            _cancel(answers)  # the client went away (or we are done): the scheduler drops the sequences

    return EventSourceResponse(events(), sep="\n", ping=15)


async def _pending(queue: asyncio.Queue) -> list[Event]:
    """The next events, with ids of one choice that queued up while the client was being served joined into
    one event: under load, fewer and larger chunks instead of falling further behind."""
    events = [await queue.get()]
    while not queue.empty():
        events.append(queue.get_nowait())
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if last is not None and event.kind == last.kind == "tokens" and event.index == last.index:
            logprobs = None if last.logprobs is None or event.logprobs is None else last.logprobs + event.logprobs
            merged[-1] = Event("tokens", ids=last.ids + event.ids, logprobs=logprobs, index=event.index)
        else:
            merged.append(event)
    return merged


def _dump(obj) -> str:
    return obj.model_dump_json() if hasattr(obj, "model_dump_json") else json.dumps(obj, ensure_ascii=False)
