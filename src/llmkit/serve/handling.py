"""From a validated request to its answer: the generation job, then the whole text or an SSE stream.

The routes in app.py check what they can from the body; here the prompt is checked against the
model's context and the server's limits, the job goes to the model's engine (429 when its queue is
full), and the engine's events become a response, recorded for feedback and metrics when done.
The engine sends token ids; they become text here (`Answer`). Stop strings go to the engine as a
condition on ids (a second `TextStream` in the scheduler's thread), so both sides stop on the same token.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sse_starlette.sse import EventSourceResponse

import llmkit.serve.schemas as s
from llmkit.runtime.detokenize import TextStream
from llmkit.runtime.sampling import Sampler
from llmkit.serve.engine import Event, Job, QueueFull
from llmkit.serve.errors import ApiError
from llmkit.serve.served import ServedModel

if TYPE_CHECKING:
    from llmkit.serve.state import ServerState


def bos_prompt(served: ServedModel) -> list[int]:
    bos = served.tokenizer.bos_token_id
    if bos is None:
        raise ApiError(400, "'prompt' is empty and the model has no BOS token to start from", param="prompt")
    return [bos]


@dataclass
class Answer:
    """A request's side of its job: the ids the engine sends become text here."""

    job: Job
    text: TextStream
    ids: list[int] = field(default_factory=list)

    def take(self, event: Event) -> tuple[str, Event | None]:
        """The text an engine event adds, and the final event once the answer is complete."""
        if event.kind == "done":
            return self.text.finish(), event
        piece = ""
        for tok in event.ids:
            if self.text.stopped:  # the engine's stop check ended the row on this same token
                break
            self.ids.append(tok)
            piece += self.text.push(self.ids)
        return piece, None


def stop_check(tokenizer, stops: list[str]):
    """The engine's view of stop strings: a condition on the generated ids, run in the scheduler's thread."""
    if not any(stops):
        return None
    watcher = TextStream(tokenizer, stops)

    def stopped(ids: list[int]) -> bool:
        watcher.push(ids)
        return watcher.stopped

    return stopped


def make_answer(state: ServerState, served: ServedModel, ids: list[int], body: s.Sampling, max_tokens: int | None,
         stop_ids: list[int]) -> Answer:
    context = served.max_len or 10**9
    limit = state.cfg.max_tokens
    if max_tokens is not None and max_tokens > limit:
        raise ApiError(400, f"max_tokens is {max_tokens}, over this server's limit of {limit}", param="max_tokens",
                       code="invalid_value")
    if len(ids) >= context:
        raise ApiError(400, f"the prompt is {len(ids)} tokens and the model's context is {context}; shorten it",
                       param="messages" if isinstance(body, s.ChatRequest) else "prompt", code="context_length_exceeded")
    if max_tokens is None:
        max_tokens = min(limit, context - len(ids))
    elif len(ids) + max_tokens > context:
        raise ApiError(400, f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the model's context "
                       f"of {context}; ask for at most {context - len(ids)} tokens", param="max_tokens",
                       code="context_length_exceeded")
    sampler = Sampler(len(served.tokenizer), ids, temperature=body.temperature, top_p=body.top_p, seed=body.seed)
    job = Job(ids=ids, max_new=max_tokens, sampler=sampler, eos=served.eos | set(stop_ids),
              stop_check=stop_check(served.tokenizer, body.stops), deadline=time.perf_counter() + state.cfg.timeout,
              loop=asyncio.get_running_loop())
    return Answer(job, TextStream(served.tokenizer, body.stops))


def usage(done: Event) -> s.Usage:
    return s.Usage(prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                   total_tokens=done.prompt_tokens + done.completion_tokens)


def usage_wanted(body: s.Sampling) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _submit(state: ServerState, served: ServedModel, job: Job) -> None:
    try:
        served.engine.submit(job)
    except QueueFull:
        state.metrics.rejected.labels("queue_full").inc()
        raise ApiError(429, f"the server is busy: {served.engine.max_queue} requests are queued for '{served.id}'; retry shortly",
                       code="queue_full", headers={"Retry-After": "1"}) from None


def _finished(state: ServerState, served: ServedModel, rid: str, entry: dict, text: str, done: Event) -> None:
    state.metrics.tokens.labels(served.id, "prompt").inc(done.prompt_tokens)
    state.metrics.tokens.labels(served.id, "completion").inc(done.completion_tokens)
    if done.first_token_seconds is not None:
        state.metrics.ttft.labels(served.id).observe(done.first_token_seconds)
    entry = {**entry, "response": text}
    state.remember(rid, entry)
    if state.cfg.log_requests:
        counts = {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens}
        state.registry.add_feedback(served.id, response_id=rid, prompt=entry["prompt"], response=text,
                                    extra={"kind": "request", "endpoint": entry["endpoint"], "usage": counts,
                                           "model_ref": entry["model_ref"]})


def timeout_error(timeout: float, fewer: str = "tokens") -> ApiError:
    return ApiError(408, f"the request took longer than the server's timeout of {timeout:g} s; ask for fewer "
                    f"{fewer} or retry when the server is less busy", type="timeout_error", code="timeout")


def _failed(event: Event, timeout: float) -> ApiError:
    if event.finish_reason == "timeout":
        return timeout_error(timeout)
    return ApiError(503, event.message, type="server_error", code="engine_error")


async def collect(state: ServerState, served: ServedModel, answer: Answer, request: Request, rid: str,
                  entry: dict) -> tuple[str, Event]:
    job = answer.job
    _submit(state, served, job)
    parts: list[str] = []
    watcher = asyncio.create_task(_watch_disconnect(request, job))
    try:
        while True:
            event = await job.events.get()
            if event.kind == "disconnected":
                raise ApiError(400, "client disconnected")
            if event.kind == "error":
                raise _failed(event, state.cfg.timeout)
            piece, done = answer.take(event)
            parts.append(piece)
            if done is not None:
                text = "".join(parts)
                await run_in_threadpool(_finished, state, served, rid, entry, text, done)
                return text, done
    finally:
        watcher.cancel()
        job.cancelled = True  # no-op once done; frees the slot if the handler was cancelled


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Beside a whole-answer request, whatever the events do: once its client has gone, cancel the job (the
    scheduler drops it at its next step and counts it) and wake the handler waiting for events.

    The body has been read, so the next ASGI message is the disconnect; this waits for it rather than
    polling `request.is_disconnected()`, whose instantly cancelled receive never sees the message through
    an http middleware's task group (and so never reported a disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancelled = True
    job.events.put_nowait(Event("disconnected"))


def stream(state: ServerState, served: ServedModel, answer: Answer, request: Request, rid: str, entry: dict, chunk,
           first: str, include_usage: bool, role: bool = False) -> EventSourceResponse:
    job = answer.job
    _submit(state, served, job)

    async def events() -> AsyncIterator[dict]:
        parts: list[str] = []
        try:
            if role:
                yield {"data": _dump(chunk("", None, role=True))}
            elif first:
                yield {"data": _dump(chunk(first, None))}
            done = failed = None
            while done is None and failed is None:
                for event in await _pending(job):
                    if event.kind == "error":
                        failed = _failed(event, state.cfg.timeout)
                        break
                    piece, done = answer.take(event)
                    if piece:
                        parts.append(piece)
                        yield {"data": _dump(chunk(piece, None))}
                    if done is not None:
                        break
            if failed is not None:
                yield {"data": json.dumps({"error": {"message": failed.message, "type": failed.type, "param": None,
                                                     "code": failed.code}})}
            if done is not None:
                yield {"data": _dump(chunk("", done.finish_reason))}
                if include_usage:
                    yield {"data": _dump(chunk("", None, usage=usage(done)))}
                await run_in_threadpool(_finished, state, served, rid, entry, "".join(parts), done)
            yield {"data": "[DONE]"}
        finally:
            job.cancelled = True  # the client went away (or we are done): the scheduler drops the sequence

    return EventSourceResponse(events(), sep="\n", ping=15)


async def _pending(job: Job) -> list[Event]:
    """The next events, with ids that queued up while the client was being served joined into one
    event: under load, fewer and larger chunks instead of falling further behind."""
    events = [await job.events.get()]
    while not job.events.empty():
        events.append(job.events.get_nowait())
    merged: list[Event] = []
    for event in events:
        if merged and event.kind == "tokens" and merged[-1].kind == "tokens":
            merged[-1] = Event("tokens", ids=merged[-1].ids + event.ids)
        else:
            merged.append(event)
    return merged


def _dump(obj) -> str:
    return obj.model_dump_json() if hasattr(obj, "model_dump_json") else json.dumps(obj, ensure_ascii=False)
