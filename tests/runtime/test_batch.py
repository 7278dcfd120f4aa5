"""torch_decoder on a tiny real Llama: a group of prompts is prefilled in one pass through the model whether the
running batch shares a KV pool or (a pool over the memory budget) each sequence has a cache of its own, and the
group's logits and next steps equal each prompt run alone, a prompt whose start is in the prefix cache included."""

from __future__ import annotations

import pytest
import torch

from llmkit.runtime import batch
from llmkit.runtime.batch import torch_decoder
from llmkit.runtime.decoder import get_decoder
from llmkit.runtime.prefix_cache import PrefixCache
from tests import tiny_lm

one_thread = pytest.fixture(scope="module", autouse=True)(tiny_lm.single_thread)
tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)
trained = pytest.fixture(scope="module")(tiny_lm.train_tiny)


@pytest.mark.parametrize("pooled", [True, False])
def test_a_group_is_prefilled_in_one_pass_and_equals_each_prompt_alone(tokenizer, trained, pooled, monkeypatch):
    fast = get_decoder(trained)
    if not pooled:
        monkeypatch.setattr(batch, "POOL_BUDGET", 0)  # every pool is over it: caches of their own
    dec = torch_decoder(trained, 4, PrefixCache(budget_bytes=1 << 24, block=8))
    ids = [tokenizer(text)["input_ids"] for text in ("the cat sat on the mat. the dog", "the dog sat", "a")]
    states, _ = dec.prefill_many([ids[0]], [len(ids[0]) + 8])  # its first 3 blocks go into the prefix cache
    dec.release(states[0])
    prompts = [ids[0][:24] + ids[1], ids[1], ids[2]]  # the first starts with the cached blocks

    passes = []
    prefill_many = fast.prefill_many
    monkeypatch.setattr(fast, "prefill_many", lambda *args: passes.append(args[0]) or prefill_many(*args))
    states, logits = dec.prefill_many(prompts, [len(p) + 8 for p in prompts])
    assert len(passes) == 1 and [len(p) for p in passes[0]] == [len(ids[1]), len(ids[1]), 1]
    assert [s.restored for s in states] == [24, 0, 0]
    assert (states[0].pool is not None) == pooled

    monkeypatch.undo()
    tokens = logits.argmax(-1).tolist()
    alone = [fast.prefill(p, capacity=len(p) + 8) for p in prompts]
    torch.testing.assert_close(logits, torch.stack([first for _, first in alone]), rtol=1e-4, atol=1e-4)
    for _ in range(4):
        got = dec.step(states, tokens)
        want = torch.stack([fast.step([state], [t])[0] for (state, _), t in zip(alone, tokens, strict=True)])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        tokens = got.argmax(-1).tolist()
