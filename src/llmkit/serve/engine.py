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

A row whose own constraint fails (`serve.sampled`: a grammar engine limit hit deep in a schema) ends alone: its
request gets an `invalid_grammar` error and the other rows of the step go on.

Log-probabilities (`Job.logprobs`, for OpenAI's `logprobs`/`top_logprobs`) are the log_softmax of the
model's raw logits of the step, before any sampling transform (as vLLM's default), computed only for the
rows that asked. Several choices of one prompt (`n` > 1) are one job and its `forks`: the prompt is
prefilled once, each fork gets a copy of its cache (`Decoder.fork`) and decodes on its own from there,
admitted together into one worker's batch. A backend without `fork` runs each choice as a job of its own.

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

import torch

from llmkit.runtime.batch import Decoder
from llmkit.runtime.sampling import Sampler
from llmkit.serve.sampled import Logprob, sample_rows

log = logging.getLogger("llmkit.serve")


class QueueFull(Exception):
    pass


@dataclass
class Event:
    kind: str  # "tokens" | "done" | "error" (from the scheduler) | "disconnected" (from the request's side)
    ids: list[int] = field(default_factory=list)  # "tokens": the ids sampled since the last event
    logprobs: list[Logprob] | None = None  # "tokens", when the job asked: one per id
    index: int = 0  # the choice (of `n`) this event is about
    message: str = ""  # "error": what went wrong
    code: str | None = None  # "error": "invalid_grammar" when the request's own constraint failed (its fault)
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
    submitted: float = field(default_factory=time.perf_counter)  # or the request's arrival: handling._submit
    first_token: float | None = None
    released: bool = False
    decoder: Decoder | None = None
    index: int = 0  # which of the request's choices this is
    logprobs: int | None = None  # None: not asked; k: the sampled token's log-probability and the top k
    forks: list[Job] = field(default_factory=list)  # the other choices, started from this job's prefill
    adapter: int = 0  # the LoRA adapter (id on the base's decoder) to decode with; 0 = the base itself

    @property
    def size(self) -> int:
        """Rows of a batch this job takes once admitted: itself and its forks."""
        return 1 + len(self.forks)

    def emit(self, event: Event) -> None:
        event.index = self.index
        _outbox().setdefault(self.loop, []).append((self, event))


# The decode workers that have rows to decode, across every engine of the process (several models served at once):
# torch's thread count is one setting for the process, so whether a worker is alone is asked of all of them.
_busy_lock = threading.Lock()
_busy: set[int] = set()


def _mark_busy(busy: bool) -> int:
    """Mark the calling worker as having rows to decode or not; returns how many workers have."""
    me = threading.get_ident()
    with _busy_lock:
        if busy:
            _busy.add(me)
        else:
            _busy.discard(me)
        return len(_busy)


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
        self.on_prefill: Callable[[int], None] | None = None  # called with the prompt tokens of each prefill
        self.adapter_rows: collections.Counter[int] = collections.Counter()  # adapter id -> rows queued or running
        self.prefix_cache = decoders[0].prefix_cache  # the model's PrefixCache (torch, Llama family), for /metrics
        self._stop = False
        # Each worker runs on its share of the compute threads while more than one has work, and the lead (the
        # first) on all of them while it alone has: one client decodes on every core. torch's thread count is one
        # setting for the process; every worker decides it from the same count of busy workers before each step.
        # Only the lead ever exceeds its share, and the others take work only while it has some: a worker that once
        # ran on several threads keeps an OpenMP team for life, and once the teams outnumber the cores libgomp stops
        # spin-waiting -- a lone client's steps took 11-14 ms instead of 6-7 (docs/benchmarks.md).
        self.shared_threads = torch.get_num_threads()
        self.solo_threads = self.shared_threads * len(decoders)
        self.lead = decoders[0]
        self.lead_rows = 0  # rows the lead runs: the other workers take work only while it has some
        self.threads = [threading.Thread(target=self._worker, args=(d,), daemon=True, name=f"llmkit-engine-{name}-{i}")
                        for i, d in enumerate(decoders)]
        for t in self.threads:
            t.start()

    @property
    def max_len(self) -> int | None:
        return self.decoders[0].max_len

    @property
    def shares_prefill(self) -> bool:
        """Whether a job's forks start from its prefill (else each choice is prefilled on its own)."""
        return all(d.fork is not None for d in self.decoders)

    @property
    def max_choices(self) -> int:
        """The most choices one request can have: forks share one worker's batch with their job."""
        return min(d.max_batch for d in self.decoders) if self.shares_prefill else 2**31

    def depth(self) -> int:
        return len(self.waiting)

    def submit(self, job: Job) -> None:
        """Queue a job (its forks ride with it); each choice queued on its own where prefills are not shared."""
        jobs = [job]
        rows = [job, *job.forks]
        if job.forks and not self.shares_prefill:
            jobs, job.forks = [job, *job.forks], []
        with self.cv:
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull
            self.waiting.extend(jobs)
            for row in rows:
                if row.adapter:
                    self.adapter_rows[row.adapter] += 1
            self.cv.notify_all()  # the lead among them: another worker does not take work while the lead has none

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
            _mark_busy(False)
            _flush()

    def _admit(self, dec: Decoder, active: list[Job]) -> list[Job]:
        """Waiting jobs for this worker's batch, in order (called holding the lock)."""
        admit: list[Job] = []
        # With several workers, each takes its share of what is waiting and running.
        share = -(-(self.running + len(self.waiting)) // len(self.decoders))
        room, used = min(dec.max_batch, max(share, 1)), len(active)
        while self.waiting:
            size = self.waiting[0].size
            # A job with forks may exceed the share; an idle worker takes it whole (max_choices <= max_batch).
            if used + size > room and (used or size > dec.max_batch):
                break
            job = self.waiting.popleft()
            for row in (job, *job.forks):
                row.decoder = dec
            admit.append(job)
            used += size
        self.running += sum(job.size for job in admit)
        return admit

    def _may_take(self, dec: Decoder) -> bool:
        """Whether `dec` may admit waiting work now: the lead always, another worker while the lead has rows."""
        return bool(self.waiting) and (dec is self.lead or self.lead_rows > 0)

    def _schedule(self, dec: Decoder) -> None:
        active: list[Job] = []
        lead = dec is self.lead
        while True:
            _flush()
            if not active:
                _mark_busy(False)
            with self.cv:
                if lead:
                    self.lead_rows = len(active)
                while not self._may_take(dec) and not active and not self._stop:
                    self.cv.wait()
                if self._stop:
                    for job in active + list(self.waiting):
                        job.emit(Event("error", message="the server is shutting down"))
                    return
                admit = self._admit(dec, active) if self._may_take(dec) else []
                if lead:
                    self.lead_rows = len(active) + sum(job.size for job in admit)
                    if admit and self.waiting:
                        self.cv.notify_all()  # the others may take what the lead left now that it has work
            busy = _mark_busy(bool(admit or active))
            try:
                # Threads before the prefill too: a worker other than the lead never runs on more than its share.
                self._use_threads_for(lead, busy, len(active) + sum(job.size for job in admit))
                alive = [job for job in admit if self._alive(job) or self._drop(job)]
                # Prefill the newcomers together (bounded, so running sequences are not stalled long).
                for start in range(0, len(alive), PREFILL_GROUP):
                    active += self._prefill(dec, alive[start:start + PREFILL_GROUP])
                active = [j for j in active if self._alive(j) or self._release(j)]
                if active:
                    self._use_threads_for(lead, busy, len(active))
                    self._step(dec, active)
                    active = [j for j in active if j.last >= 0 or self._release(j)]
            except Exception as err:  # a bug or OOM: fail the requests in flight, keep serving others
                log.exception("engine %s failed a step", self.name)
                for job in {id(j): j for j in active + [r for j in admit for r in (j, *j.forks)]}.values():
                    job.emit(Event("error", message=f"generation failed: {type(err).__name__}: {err}"))
                    self._release(job)
                active = []

    def _prefill(self, dec: Decoder, group: list[Job]) -> list[Job]:
        """Prefill the group's prompts in one forward and sample each row's first token; the rows that go on."""
        adapters = [j.adapter for j in group]  # LoRA adapters on the base, each row its own (torch backend only)
        states, logits = dec.prefill_many([j.ids for j in group], [len(j.ids) + j.max_new for j in group],
                                          *([adapters] if any(adapters) else []))
        if self.on_prefill:  # the tokens computed: a prefix restored from the prefix cache was not
            self.on_prefill(sum(len(j.ids) - getattr(s, "restored", 0) for j, s in zip(group, states, strict=True)))
        rows, of = [], []  # every choice, and the prompt (row of logits) it continues
        for r, (job, state) in enumerate(zip(group, states, strict=True)):
            job.state = state
            for fork in job.forks:  # before the job's first token, which may end (and release) it
                fork.state = dec.fork(state, len(job.ids) + fork.max_new)
            rows += [job, *job.forks]
            of += [r] * job.size
        if len(rows) > len(group):
            logits = logits[of]
        going = []
        for job, tok, lp, err in sample_rows(rows, logits):
            if err is None and self._accept(job, tok, lp):
                going.append(job)
            else:
                self._fail(job, err)
                self._release(job)
        return going

    def _alive(self, job: Job) -> bool:
        if job.cancelled:
            if self.on_cancel and job.index == 0:  # one count per request, however many choices
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
                if job.adapter:
                    self.adapter_rows[job.adapter] -= 1
        return False

    def _drop(self, job: Job) -> bool:
        """Release a job that was admitted but will not start, and its forks, which won't either."""
        for row in (job, *job.forks):
            self._release(row)
        return False

    def _use_threads_for(self, lead: bool, busy: int, rows: int) -> None:
        """Every thread for the lead while it alone (of all workers, of every engine) has work: `rows`, all the
        engine runs, and nothing waiting; else this worker's share."""
        alone = lead and busy == 1 and self.running <= rows and not self.waiting
        n = self.solo_threads if alone else self.shared_threads
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def _step(self, dec: Decoder, active: list[Job]) -> None:
        logits = dec.step([j.state for j in active], [j.last for j in active])  # (B, vocab)
        if self.on_step:
            self.on_step(len(active))
        for job, tok, lp, err in sample_rows(active, logits):
            if err is not None or not self._accept(job, tok, lp):
                self._fail(job, err)
                job.last = -1

    def _fail(self, job: Job, err: Exception | None) -> None:
        """End one row whose own constraint failed (a grammar engine limit deep in its schema): its request gets
        the error, the rest of the batch goes on. The client's schema, not a bug: one line in the log."""
        if err is not None:
            log.warning("engine %s: a request's constraint failed, ending that request: %s", self.name, err)
            job.emit(Event("error", message=str(err), code="invalid_grammar"))

    def _accept(self, job: Job, tok: int, logprob: Logprob | None = None) -> bool:
        """Take the sampled token and send it on; False when the job is finished."""
        if job.first_token is None:
            job.first_token = time.perf_counter()
        job.out.append(tok)
        job.emit(Event("tokens", ids=[tok], logprobs=None if logprob is None else [logprob]))
        stopped = tok in job.eos or (job.stop_check is not None and job.stop_check(job.out))
        finish = "stop" if stopped else "length" if len(job.out) >= job.max_new else None
        if finish is None:
            job.last = tok
            return True
        job.emit(Event("done", finish_reason=finish, prompt_tokens=len(job.ids), completion_tokens=len(job.out),
                       first_token_seconds=job.first_token - job.submitted))
        return False

