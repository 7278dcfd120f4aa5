"""The engine sends token ids; the request's side (serve.handling.Answer) makes the text. Stop strings reach
the engine as a condition on ids (serve.handling.stop_check): the row ends on the token that completes one."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time

import pytest

from llmkit.runtime.batch import torch_decoder
from llmkit.runtime.detokenize import TextStream
from llmkit.runtime.sampling import Sampler
from llmkit.serve.engine import Engine, Event, Job, QueueFull
from llmkit.serve.handling import Answer, stop_check
from tests import tiny_lm

tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)


@pytest.fixture(scope="module")
def engine(tokenizer):
    eng = Engine("tiny", [torch_decoder(tiny_lm.train_tiny(tokenizer), max_batch=4)], max_queue=8)
    eng.cancels = 0
    eng.on_cancel = lambda: setattr(eng, "cancels", eng.cancels + 1)
    yield eng
    eng.close()


def _job(tokenizer, prompt: str, max_new: int, loop, stops=()) -> Job:
    ids = tokenizer(prompt)["input_ids"]
    return Job(ids=ids, max_new=max_new, sampler=Sampler(len(tokenizer), ids, temperature=0.0), eos=set(),
               stop_check=stop_check(tokenizer, list(stops)), deadline=time.perf_counter() + 60, loop=loop)


def _run(coro):
    # In a thread of its own: Playwright's session fixture keeps an event loop running in the main one.
    with cf.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _events(job: Job, until) -> list[Event]:
    events = []
    while not until(events):
        events.append(await asyncio.wait_for(job.events.get(), timeout=30))
    return events


def test_the_engine_sends_ids_and_the_answer_makes_the_text(engine, tokenizer):
    async def run():
        job = _job(tokenizer, "the cat", 12, asyncio.get_running_loop())
        engine.submit(job)
        return job, await _events(job, lambda ev: ev and ev[-1].kind != "tokens")

    job, events = _run(run())
    assert [e.kind for e in events] == ["tokens"] * 12 + ["done"]
    assert all(len(e.ids) == 1 and isinstance(e.ids[0], int) for e in events[:-1])
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 12
    ids = [e.ids[0] for e in events[:-1]]
    answer = Answer(job, TextStream(tokenizer))
    text = "".join(answer.take(e)[0] for e in events)
    assert text == tokenizer.decode(ids, skip_special_tokens=True)


def test_a_stop_string_ends_the_row_on_the_token_that_completes_it(engine, tokenizer):
    # Greedy text of the tiny model, then the same request with a stop string taken from inside it.
    async def run(stops, max_new):
        job = _job(tokenizer, "the cat", max_new, asyncio.get_running_loop(), stops)
        answer = Answer(job, TextStream(tokenizer, list(stops)))
        engine.submit(job)
        events = await _events(job, lambda ev: ev and ev[-1].kind != "tokens")
        return job, events, "".join(answer.take(e)[0] for e in events)

    _, events, full = _run(run((), 40))
    stop = full[10:13]
    assert full.find(stop) == 10 and len(full) == 40, full
    cancels = engine.cancels
    job, events, text = _run(run((stop,), 40))
    assert text == full[:10]
    assert events[-1].finish_reason == "stop" and events[-1].completion_tokens == 13
    assert len(job.out) == 13 and sum(len(e.ids) for e in events) == 13  # not one token past the stop
    assert engine.cancels == cancels and engine.running == 0


def test_the_queue_holds_max_queue_requests_and_refuses_the_next(engine, tokenizer):
    """--max-queue N: N requests wait and the next is refused (QueueFull: the route's 429). The engine's workers are
    stopped first, so nothing drains the queue while it fills."""
    idle = Engine("queue", engine.decoders, max_queue=3)
    idle.close()
    for _ in range(3):
        idle.submit(_job(tokenizer, "the cat", 4, None))
    with pytest.raises(QueueFull):
        idle.submit(_job(tokenizer, "the cat", 4, None))
    assert idle.depth() == 3
