"""The serving engine: a scheduler thread per model that batches concurrent requests.

Continuous batching (torch backend): between two decode steps the scheduler admits waiting requests
(one prefill each, into a KV cache of their own) and drops finished, cancelled or timed-out ones, so
the running batch changes every step and nobody waits for the slowest request of a fixed batch.
Every step advances all running sequences by one token in one batched forward
(`runtime.decoder.get_decoder(model).step(states, tokens)`: projections and MLP batched, attention per
sequence, so there is no padding to mask). Sampling and stop handling are per request.

llama.cpp batches the same way: one context holds every running sequence under its own sequence id
(`runtime.llama_cpp.LlamaCppBatch`), one decode per step. ONNX (no KV cache) holds one
sequence per instance: a batch of one per worker, as many workers as instances; requests queue.

The engine knows token ids, not text: it sends each request the ids it samples, and the request's side
(`serve.handling.Answer`) turns them into text. A request's stop strings reach the engine as an opaque
condition on the ids so far (`Job.stop_check`), checked right after each token, so a row ends on the
step its stop string completes rather than when the client side notices.

The scheduler runs in threads because the forward releases the GIL and must not block the event
loop; results go back to each request's asyncio.Queue with call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmkit.runtime.batch import Decoder
from llmkit.runtime.sampling import Sampler

log = logging.getLogger("llmkit.serve")


class QueueFull(Exception):
    pass


@dataclass
class Event:
    kind: str  # "tokens" | "done" | "error" (from the scheduler) | "disconnected" (from the request's side)
    ids: list[int] = field(default_factory=list)  # "tokens": the ids sampled since the last event
    message: str = ""  # "error": what went wrong
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_seconds: float | None = None


@dataclass
class Job:
    """One request's generation, owned by the scheduler once submitted."""

    ids: list[int]
    max_new: int
    sampler: Sampler
    eos: set[int]
    deadline: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    stop_check: Callable[[list[int]], bool] | None = None  # True when the ids so far end the answer
    cancelled: bool = False  # set by the request handler (client gone); read by the scheduler
    out: list[int] = field(default_factory=list)
    state: Any = None
    last: int = -1
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    released: bool = False
    decoder: Decoder | None = None

    def emit(self, event: Event) -> None:
        _outbox().setdefault(self.loop, []).append((self, event))


# Events of one scheduler pass, delivered to each event loop with one wake-up rather than one per
# token per request (each wake-up is a write to the loop's self-pipe and a turn of the loop).
# Per scheduler thread: each flushes its own after every pass.
_local = threading.local()


def _outbox() -> dict[asyncio.AbstractEventLoop, list[tuple[Job, Event]]]:
    if not hasattr(_local, "box"):
        _local.box = {}
    return _local.box


def _deliver(batch: list[tuple[Job, Event]]) -> None:
    for job, event in batch:
        job.events.put_nowait(event)


def _flush() -> None:
    box = _outbox()
    while box:
        loop, batch = box.popitem()
        try:
            loop.call_soon_threadsafe(_deliver, batch)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            for job, _ in batch:
                job.cancelled = True


PREFILL_GROUP = 8  # new requests prefilled in one forward


class Engine:
    def __init__(self, name: str, decoders: list[Decoder], *, max_queue: int, on_step: Callable[[int], None] | None = None):
        self.name = name
        self.decoders = decoders
        self.max_queue = max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.running = 0
        self.cv = threading.Condition()
        self.on_step = on_step
        self.on_cancel: Callable[[], None] | None = None
        self._stop = False
        self.threads = [threading.Thread(target=self._worker, args=(d,), daemon=True, name=f"llmkit-engine-{name}-{i}")
                        for i, d in enumerate(decoders)]
        for t in self.threads:
            t.start()

    @property
    def max_len(self) -> int | None:
        return self.decoders[0].max_len

    def depth(self) -> int:
        return len(self.waiting)

    def submit(self, job: Job) -> None:
        with self.cv:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(job)
            self.cv.notify()

    def close(self) -> None:
        with self.cv:
            self._stop = True
            self.cv.notify_all()
        for t in self.threads:
            t.join(timeout=10)

    # --- the scheduler loop --------------------------------------------------------------------

    def _worker(self, dec: Decoder) -> None:
        try:
            self._schedule(dec)
        finally:
            _flush()

    def _schedule(self, dec: Decoder) -> None:
        active: list[Job] = []
        while True:
            _flush()
            with self.cv:
                while not self.waiting and not active and not self._stop:
                    self.cv.wait()
                if self._stop:
                    for job in active + list(self.waiting):
                        job.emit(Event("error", message="the server is shutting down"))
                    return
                admit = []
                # With several workers, each takes its share of what is waiting and running.
                share = -(-(self.running + len(self.waiting)) // len(self.decoders))
                while self.waiting and len(active) + len(admit) < min(dec.max_batch, max(share, 1)):
                    admit.append(self.waiting.popleft())
                    admit[-1].decoder = dec
                self.running += len(admit)
            try:
                alive = [job for job in admit if self._alive(job) or self._release(job)]
                # Prefill the newcomers together (bounded, so running sequences are not stalled long).
                for start in range(0, len(alive), PREFILL_GROUP):
                    group = alive[start:start + PREFILL_GROUP]
                    states, logits = dec.prefill_many([j.ids for j in group], [len(j.ids) + j.max_new for j in group])
                    for job, state in zip(group, states, strict=True):
                        job.state = state
                    for job, tok in zip(group, Sampler.sample_batch([j.sampler for j in group], logits), strict=True):
                        if self._accept(job, tok):
                            active.append(job)
                        else:
                            self._release(job)
                active = [j for j in active if self._alive(j) or self._release(j)]
                if active:
                    self._step(dec, active)
                    active = [j for j in active if j.last >= 0 or self._release(j)]
            except Exception as err:  # a bug or OOM: fail the requests in flight, keep serving others
                log.exception("engine %s failed a step", self.name)
                for job in {id(j): j for j in active + admit}.values():
                    job.emit(Event("error", message=f"generation failed: {type(err).__name__}: {err}"))
                    self._release(job)
                active = []

    def _alive(self, job: Job) -> bool:
        if job.cancelled:
            if self.on_cancel:
                self.on_cancel()
            return False
        if time.perf_counter() > job.deadline:
            job.emit(Event("error", message="timeout", finish_reason="timeout"))
            return False
        return True

    def _release(self, job: Job) -> bool:
        if job.decoder is not None and job.state is not None:
            job.decoder.release(job.state)
        job.state = None  # frees the KV cache now rather than when the handler lets go
        if not job.released:
            job.released = True
            with self.cv:
                self.running -= 1
        return False

    def _step(self, dec: Decoder, active: list[Job]) -> None:
        logits = dec.step([j.state for j in active], [j.last for j in active])  # (B, vocab)
        if self.on_step:
            self.on_step(len(active))
        tokens = Sampler.sample_batch([j.sampler for j in active], logits)
        for job, tok in zip(active, tokens, strict=True):
            if not self._accept(job, tok):
                job.last = -1

    def _accept(self, job: Job, tok: int) -> bool:
        """Take the sampled token and send it on; False when the job is finished."""
        if job.first_token is None:
            job.first_token = time.perf_counter()
        job.out.append(tok)
        job.emit(Event("tokens", ids=[tok]))
        stopped = tok in job.eos or (job.stop_check is not None and job.stop_check(job.out))
        finish = "stop" if stopped else "length" if len(job.out) >= job.max_new else None
        if finish is None:
            job.last = tok
            return True
        job.emit(Event("done", finish_reason=finish, prompt_tokens=len(job.ids), completion_tokens=len(job.out),
                       first_token_seconds=job.first_token - job.submitted))
        return False
