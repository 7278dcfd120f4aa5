"""The prefix cache on a tiny real Llama: a prompt whose start was computed before is restored block by block and
only its rest prefilled, with the logits and greedy continuation of a full prefill; an entry is reused only under its own
parent and tokens (a hash collision is a miss); the byte budget evicts leaves before the chain's first block."""

from __future__ import annotations

import pytest
import torch

from llmkit.runtime.batch import torch_decoder
from llmkit.runtime.decoder import get_decoder
from llmkit.runtime.prefix_cache import PrefixCache, _Block
from tests import tiny_lm

one_thread = pytest.fixture(scope="module", autouse=True)(tiny_lm.single_thread)
tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)
trained = pytest.fixture(scope="module")(tiny_lm.train_tiny)

BLOCK = 8


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text)["input_ids"]


def _greedy(dec, state, logits, n: int) -> list[int]:
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = dec.step([state], [out[-1]])[0]
    return out


@pytest.mark.parametrize("pooled", [True, False])
def test_restored_prefix_gives_the_full_prefills_logits_and_answer(tokenizer, trained, pooled):
    fast = get_decoder(trained)
    system = _ids(tokenizer, "the cat sat on the mat. the dog sat on the log. ")  # 48 ids: 6 blocks
    first, second = system + _ids(tokenizer, "the cat"), system + _ids(tokenizer, "the dog")
    cache = PrefixCache(budget_bytes=1 << 24, block=BLOCK)
    dec = torch_decoder(trained, 4, cache)
    if not pooled:  # the lone-cache path (a pool bigger than the budget)
        from llmkit.runtime import batch

        budget, batch.POOL_BUDGET = batch.POOL_BUDGET, 0
        try:
            dec = torch_decoder(trained, 4, cache)
        finally:
            batch.POOL_BUDGET = budget
    states, _ = dec.prefill_many([first], [len(first) + 8])
    assert states[0].restored == 0 and cache.hits == 0
    dec.release(states[0])
    states, logits = dec.prefill_many([second], [len(second) + 8])
    restored = states[0].restored
    assert restored == len(system) // BLOCK * BLOCK == 48, "whole blocks of the shared start are restored"
    assert cache.hits == restored and cache.queried == len(first) + len(second)
    fresh, want = fast.prefill(second, capacity=len(second) + 8)
    torch.testing.assert_close(logits[0], want, rtol=1e-4, atol=1e-4)
    assert _greedy(fast, states[0], logits[0], 5) == _greedy(fast, fresh, want, 5)


def test_a_whole_cached_prompt_still_computes_its_last_token(tokenizer, trained):
    ids = _ids(tokenizer, "the cat sat on the mat.")[:17]  # 2 blocks and one token
    cache = PrefixCache(1 << 24, block=BLOCK)
    dec = torch_decoder(trained, 2, cache)
    for _ in range(2):
        states, logits = dec.prefill_many([ids[:16]], [24])
        dec.release(states[0])
    assert states[0].restored == 8  # 16 ids: the second block holds the last token, so it is computed
    want = get_decoder(trained).prefill(ids[:16], capacity=24)[1]
    torch.testing.assert_close(logits[0], want, rtol=1e-4, atol=1e-4)


def test_an_entry_is_reused_only_under_its_own_parent_and_tokens(tokenizer, trained):
    # What a hash collision would look like: the key of a prompt's block holds another prefix's block.
    cache = PrefixCache(1 << 24, block=BLOCK)
    dec = torch_decoder(trained, 2, cache)
    a = _ids(tokenizer, "the cat sat on the mat. the dog")  # 31 ids: blocks [the cat ], [sat on t], [he mat. ]
    states, _ = dec.prefill_many([a], [40])
    dec.release(states[0])
    (k0, _, _), (k1, _, t1), (k2, p2, t2) = cache._keys(a, 3)
    cache.blocks[k1] = _Block(parent=12345, tokens=t1, kv=cache.blocks[k1].kv)  # same tokens, another parent
    states, _ = dec.prefill_many([a], [40])
    dec.release(states[0])
    assert states[0].restored == BLOCK
    cache.blocks[k1] = _Block(parent=k0, tokens=t1, kv=cache.blocks[k1].kv)
    cache.blocks[k2] = _Block(parent=p2, tokens=t2[::-1], kv=cache.blocks[k2].kv)  # same parent, other tokens
    states, _ = dec.prefill_many([a], [40])
    assert states[0].restored == 2 * BLOCK


def test_budget_evicts_leaves_first(tokenizer, trained):
    fast = get_decoder(trained)
    block_bytes = len(fast.layers) * 2 * fast.n_kv * BLOCK * fast.head_dim * 4
    cache = PrefixCache(budget_bytes=4 * block_bytes, block=BLOCK)  # room for 4 blocks
    dec = torch_decoder(trained, 2, cache)
    shared = _ids(tokenizer, "the cat sat on the mat. ")[:16]  # 2 blocks
    for tail in ("the dog sat on the log. ", "a cat sat on a mat. the "):  # 2 more blocks each
        ids = shared + _ids(tokenizer, tail)[1:17]
        states, _ = dec.prefill_many([ids + [5]], [48])
        dec.release(states[0])
    assert cache.bytes <= 4 * block_bytes and len(cache.blocks) == 4
    states, _ = dec.prefill_many([shared + [5]], [24])
    assert states[0].restored == 16, "the shared first blocks outlive the first prompt's leaves"
