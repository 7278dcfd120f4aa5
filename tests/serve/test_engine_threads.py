"""The engine's compute threads (serve.engine): two workers decode on one thread each while both have work, and the
first worker, which takes lone work, decodes on both while it alone has work, so one client is not held to one core."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time

import pytest
import torch

from llmkit.runtime.batch import torch_decoder
from llmkit.runtime.sampling import Sampler
from llmkit.serve import engine as engine_module
from llmkit.serve.engine import Engine, Job
from tests import tiny_lm

tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)


@pytest.fixture
def two_workers(tokenizer):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    model = tiny_lm.train_tiny(tokenizer)
    # (worker thread, torch threads during its step, workers with work in the process after the step)
    seen: list[tuple[str, int, int]] = []
    eng = Engine("tiny", [torch_decoder(model, max_batch=4) for _ in range(2)], max_queue=8,
                 on_step=lambda rows: seen.append((threading.current_thread().name, torch.get_num_threads(),
                                                   len(engine_module._busy))))
    eng.seen = seen
    yield eng
    eng.close()
    torch.set_num_threads(before)


def _job(tokenizer, prompt: str, max_new: int, loop) -> Job:
    ids = tokenizer(prompt)["input_ids"]
    return Job(ids=ids, max_new=max_new, sampler=Sampler(len(tokenizer), ids, temperature=0.0), eos=set(),
               deadline=time.perf_counter() + 60, loop=loop)


def shared_while_others_worked(seen) -> list[int]:
    """The thread counts of the steps a worker took while another worker had work since its previous step: a worker
    decides before each step, so the step in which another worker's work arrived may still run on every thread."""
    by_worker: dict[str, list[tuple[int, int]]] = {}
    for name, threads, busy in seen:
        by_worker.setdefault(name, []).append((threads, busy))
    return [threads for steps in by_worker.values()
            for (_, before), (threads, busy) in zip(steps, steps[1:], strict=False) if before > 1 and busy > 1]


async def _finish(job: Job) -> None:
    while (event := await asyncio.wait_for(job.events.get(), timeout=60)).kind == "tokens":
        pass
    assert event.kind == "done", event.message


def _run(coro):
    with cf.ThreadPoolExecutor(1) as pool:  # a loop of its own (Playwright's fixture may hold the main one's)
        return pool.submit(asyncio.run, coro).result()


def overlapping_steps(eng: Engine, scenario, wanted: int = 10, rounds: int = 20) -> list[int]:
    """shared_while_others_worked over runs of `scenario` (a coroutine function) until `wanted` steps overlapped:
    on a loaded machine one run's two jobs may overlap for a step or two only (the tiny model's 64-token context
    bounds how long a job decodes), and a check of a step or two could pass by luck."""
    both: list[int] = []
    for _ in range(rounds):
        eng.seen.clear()
        _run(scenario())
        both += shared_while_others_worked(eng.seen)
        if len(both) >= wanted:
            break
    return both


def test_a_lone_request_decodes_on_every_thread_and_two_workers_share_them(two_workers, tokenizer):
    eng = two_workers
    assert (eng.shared_threads, eng.solo_threads) == (1, 2)

    async def alone():
        job = _job(tokenizer, "the cat", 16, asyncio.get_running_loop())
        eng.submit(job)
        await _finish(job)

    _run(alone())
    assert eng.seen and all(threads == 2 for _, threads, _ in eng.seen[1:])  # the first step may still run at 1
    eng.seen.clear()

    async def together():
        # The tiny model's context is 64 tokens: a long first job, and a short second one started once the first
        # decodes, so the second runs entirely while the first does.
        loop = asyncio.get_running_loop()
        first, second = _job(tokenizer, "the cat", 54, loop), _job(tokenizer, "a dog", 20, loop)
        eng.submit(first)
        assert (await asyncio.wait_for(first.events.get(), timeout=60)).kind == "tokens"
        eng.submit(second)
        await asyncio.gather(_finish(first), _finish(second))

    both = overlapping_steps(eng, together)
    workers = {name for name, _, _ in eng.seen}
    assert len(workers) == 2  # each request went to a worker of its own
    assert len(both) >= 10 and all(threads == 1 for threads in both)


def test_a_lone_worker_of_one_model_shares_the_threads_while_another_models_decodes(two_workers, tokenizer):
    """torch's thread count is one setting for the process: two served models each with one request are two busy
    workers, and neither may take every core."""
    other = Engine("other", [torch_decoder(tiny_lm.train_tiny(tokenizer), max_batch=4) for _ in range(2)], max_queue=8)
    try:
        async def both():
            loop = asyncio.get_running_loop()
            first, second = _job(tokenizer, "a dog", 54, loop), _job(tokenizer, "the cat", 20, loop)
            other.submit(first)
            assert (await asyncio.wait_for(first.events.get(), timeout=60)).kind == "tokens"
            two_workers.submit(second)  # decodes entirely while the other model's request does
            await asyncio.gather(_finish(first), _finish(second))

        steps = overlapping_steps(two_workers, both)
    finally:
        other.close()
    assert len(steps) >= 10 and all(threads == 1 for threads in steps)


def test_lone_requests_go_to_the_first_worker_and_only_it_runs_on_every_thread(two_workers, tokenizer):
    """Each worker that once ran on several threads keeps an OpenMP team for its life, and with two such teams on two
    cores libgomp stops spin-waiting: a lone client's steps took about twice as long. So lone work goes to the first
    worker (they alternated: the worker that had waited longest was woken), and the second never runs above its share."""
    eng = two_workers

    async def one(prompt: str):
        job = _job(tokenizer, prompt, 12, asyncio.get_running_loop())
        eng.submit(job)
        await _finish(job)
        return job.decoder

    for prompt in ["the cat", "a dog", "the king", "a queen", "the night", "a sword"]:
        assert _run(one(prompt)) is eng.decoders[0]
    assert {name for name, _, _ in eng.seen} == {"llmkit-engine-tiny-0"}

    async def together():
        loop = asyncio.get_running_loop()
        jobs = [_job(tokenizer, prompt, 30, loop) for prompt in ("the cat", "a dog", "the king", "a queen")]
        for job in jobs:
            eng.submit(job)
        await asyncio.gather(*map(_finish, jobs))

    eng.seen.clear()
    _run(together())
    second = [threads for name, threads, _ in eng.seen if name == "llmkit-engine-tiny-1"]
    assert second and all(threads == 1 for threads in second)  # it took a share, on one thread
