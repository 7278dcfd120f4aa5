"""llmkit.runtime.decoder and FastLlama against Hugging Face's own forward and generate() on tiny real models."""

from __future__ import annotations

import pytest
import torch

from llmkit.runtime.decoder import HFDecoder, generate_ids, get_decoder
from llmkit.runtime.fast_llama import FastLlama
from tests import tiny_lm
from tests.tiny_lm import N_NEW, VARIANTS, hf_greedy, make_model, prompts

one_thread = pytest.fixture(scope="module", autouse=True)(tiny_lm.single_thread)
tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)
trained = pytest.fixture(scope="module")(tiny_lm.train_tiny)


def fast_llama(model, threads):
    # The weight layout is split per torch thread; build it with `threads` to cover both layouts.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return FastLlama(model)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_greedy_matches_hf_generate(tokenizer, variant):
    model = make_model(tokenizer, seed=1, **VARIANTS[variant])
    assert isinstance(get_decoder(model), FastLlama)
    for ids in prompts(tokenizer):
        ours = list(generate_ids(model, ids, max_new_tokens=N_NEW, temperature=0, eos_token_id=2))
        assert ours == hf_greedy(model, ids, N_NEW)


def test_greedy_matches_hf_generate_trained(tokenizer, trained):
    for ids in prompts(tokenizer):
        assert list(generate_ids(trained, ids, max_new_tokens=30, temperature=0, eos_token_id=2)) == \
            hf_greedy(trained, ids, 30)


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("variant", ["tied", "gqa-untied-theta"])
def test_lean_forward_logits_match_hf(tokenizer, variant, threads):
    model = make_model(tokenizer, seed=2, **VARIANTS[variant])
    ids = [1] + tokenizer("the dog sat on the mat", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0]  # (T, vocab)
    fast = fast_llama(model, threads)
    assert fast.splits == threads and (threads == 1 or ref.shape[-1] % threads)  # 4: vocab padding too
    _, last = fast.prefill(ids)
    torch.testing.assert_close(last, ref[-1], atol=1e-4, rtol=0)
    # Prefill a prefix, extend it in a chunk, then one token at a time: every position matches.
    state, logits = fast.prefill(ids[:4])
    got = [logits]
    state, logits = fast.prefill(ids[4:9], state=state)
    got.append(logits)
    for tok in ids[9:]:
        got.append(fast.step([state], [tok])[0])
    want = torch.stack([ref[3], ref[8], *ref[9:]])
    torch.testing.assert_close(torch.stack(got), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_batched_step_matches_single_sequences(tokenizer, threads):
    model = make_model(tokenizer, seed=3, num_key_value_heads=2)
    fast = fast_llama(model, threads)
    a, b = [1, 5, 6, 7], [1, 8, 9, 10, 11, 12, 13]
    sa, _ = fast.prefill(a, capacity=1)  # too small on purpose: the cache must grow
    sb, _ = fast.prefill(b)
    both = fast.step([sa, sb], [14, 15])
    alone_a = fast.step([fast.prefill(a)[0]], [14])[0]
    alone_b = fast.step([fast.prefill(b)[0]], [15])[0]
    torch.testing.assert_close(both, torch.stack([alone_a, alone_b]), atol=1e-5, rtol=0)
    assert (sa.length, sb.length) == (5, 8)


@pytest.mark.parametrize("threads", [1, 2])
def test_pooled_batch_step_matches_single_sequences(tokenizer, threads):
    # Sequences in slots of one KV pool (with an unused slot between them) attend in one call per
    # layer; every step's logits equal each sequence run on its own cache, over several steps.
    model = make_model(tokenizer, seed=6, num_key_value_heads=2)
    fast = fast_llama(model, threads)
    prompts = [[1, 5, 6, 7], [1, 8, 9, 10, 11, 12, 13], [1, 14]]
    pool = fast.new_pool(slots=5, capacity=32)
    pooled = [fast.pool_state(pool, slot) for slot in (0, 2, 3)]
    first = fast.prefill_many(prompts, pooled)  # (3, vocab): the prompts through the matmuls together
    alone, alone_first = zip(*(fast.prefill(ids) for ids in prompts), strict=True)
    torch.testing.assert_close(first, torch.stack(alone_first), atol=1e-5, rtol=0)
    tokens = [15, 16, 17]
    for _ in range(6):
        got = fast.step(pooled, tokens)  # (3, vocab)
        want = torch.stack([fast.step([s], [t])[0] for s, t in zip(alone, tokens, strict=True)])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        tokens = got.argmax(-1).tolist()
    assert [s.length for s in pooled] == [len(p) + 6 for p in prompts]
    with pytest.raises(ValueError, match="pool slot"):
        fast.prefill(list(range(1, 40)), state=fast.pool_state(pool, 4))


def test_fallback_matches_hf_generate(tokenizer):
    # A GELU MLP isn't in the lean forward, so this model must take the HF fallback.
    model = make_model(tokenizer, seed=4, hidden_act="gelu")
    assert isinstance(get_decoder(model), HFDecoder)
    plain = make_model(tokenizer, seed=5, num_key_value_heads=2)
    for ids in prompts(tokenizer)[:2]:
        ours = list(generate_ids(model, ids, max_new_tokens=N_NEW, temperature=0))
        assert ours == hf_greedy(model, ids, N_NEW)
        forced = get_decoder(plain, fast=False)
        state, logits = forced.prefill(ids)
        ours = []
        for _ in range(N_NEW):
            ours.append(int(logits.argmax()))
            logits = forced.step([state], [ours[-1]])[0]
        assert ours == hf_greedy(plain, ids, N_NEW)


def test_decoder_is_rebuilt_when_weights_change(tokenizer):
    model = make_model(tokenizer, seed=9)
    first = get_decoder(model)
    assert get_decoder(model) is first
    with torch.no_grad():
        model.model.norm.weight.mul_(2.0)
    assert get_decoder(model) is not first
    ids = prompts(tokenizer)[0]
    assert list(generate_ids(model, ids, max_new_tokens=10, temperature=0)) == hf_greedy(model, ids, 10)


def _resident_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_pool_takes_memory_only_where_its_sequences_write(tokenizer):
    # A server's pool is sized for every slot at full context; what it costs is what its sequences hold.
    fast = FastLlama(make_model(tokenizer, seed=2))
    before = _resident_bytes()
    pool = fast.new_pool(slots=20_000, capacity=64)
    size = pool.numel() * pool.element_size()
    assert size > 1 << 30  # a gigabyte of address space
    state = fast.pool_state(pool, 7)
    fast.prefill([1, 5, 6, 7], state=state)
    assert _resident_bytes() - before < size // 20
    assert float(pool[:, :, 6].abs().sum()) == 0 and float(pool[:, :, 8:40].abs().sum()) == 0  # zeros elsewhere
    assert float(pool[:, :, 7, :, :4].abs().sum()) > 0
