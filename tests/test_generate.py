"""llmkit.generate against Hugging Face's own forward and generate() on tiny real models."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmkit.generate import HFDecoder, Sampler, TextStream, fit_context, generate, generate_ids, get_decoder
from llmkit.models.fast_llama import FastLlama
from llmkit.models.presets import llama_config

TEXT = "the cat sat on the mat. the dog sat on the log. "
CONTEXT = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Models this small only pay OpenMP's sync cost for a second thread; restored for other modules.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ch in sorted(set(TEXT + "abcdefghijklmnopqrstuvwxyz\n")):
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def make_model(tokenizer, seed=0, **overrides):
    # Smaller than nano: the tests are about exactness, and HF's generate() sets the pace.
    torch.manual_seed(seed)
    cfg = llama_config("nano", len(tokenizer), CONTEXT, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       overrides=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                      **overrides))
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def trained(tokenizer):
    # A few steps on repetitive text, so greedy output is text-like rather than noise.
    model = make_model(tokenizer)
    ids = torch.tensor(tokenizer(TEXT * 4)["input_ids"])
    batch = torch.stack([ids[i:i + 48] for i in range(0, 4 * 12, 12)])  # (4, 48)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


VARIANTS = {
    "tied": {},
    "gqa": {"num_key_value_heads": 2},
    "untied": {"tie_word_embeddings": False},
    "gqa-untied-theta": {"num_key_value_heads": 1, "tie_word_embeddings": False, "rope_theta": 500.0},
}


def hf_greedy(model, ids, n):
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def prompts(tokenizer):
    texts = ("the cat", "a", "dog sat on the log")
    return [[1] + tokenizer(p, add_special_tokens=False)["input_ids"] for p in texts]


N_NEW = 16


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


def fast_llama(model, threads):
    # The weight layout is split per torch thread; build it with `threads` to cover both layouts.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return FastLlama(model)
    finally:
        torch.set_num_threads(before)


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
    # Linear RoPE scaling isn't in the lean forward, so this model must take the HF fallback.
    rope = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    model = make_model(tokenizer, seed=4, rope_parameters=rope)
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


def test_seed_is_deterministic(tokenizer):
    model = make_model(tokenizer, seed=6)
    def run(seed):
        return generate(model, tokenizer, "the", max_new_tokens=30, temperature=1.0, seed=seed).token_ids

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_k_one_is_greedy(tokenizer, trained):
    greedy = generate(trained, tokenizer, "the dog", max_new_tokens=30, temperature=0)
    topk1 = generate(trained, tokenizer, "the dog", max_new_tokens=30, temperature=1.3, top_k=1, seed=3)
    assert topk1.token_ids == greedy.token_ids and topk1.text == greedy.text


def test_stop_strings_and_streaming(tokenizer, trained):
    full = generate(trained, tokenizer, "the cat", max_new_tokens=40, temperature=0)
    assert full.finish_reason == "length" and len(full.token_ids) == 40 and full.prompt_tokens == 8
    # A 3-character stop string whose first occurrence is a few characters in, so text comes before it.
    stop = next(full.text[k:k + 3] for k in range(8, 30) if full.text.find(full.text[k:k + 3]) == k)
    pieces: list[str] = []
    res = generate(trained, tokenizer, "the cat", max_new_tokens=40, temperature=0, stop=["zzz", stop],
                   on_text=pieces.append)
    assert res.finish_reason == "stop"
    assert res.text == full.text[:full.text.find(stop)]
    assert "".join(pieces) == res.text and len(pieces) > 1
    assert 0 < res.first_token_seconds <= res.seconds
    pieces = []
    res = generate(trained, tokenizer, "the cat", max_new_tokens=40, temperature=0.7, seed=1,
                   on_text=pieces.append)
    assert "".join(pieces) == res.text


def test_eos_stops(tokenizer, trained):
    first = generate(trained, tokenizer, "the", max_new_tokens=5, temperature=0).token_ids[0]
    trained.config.eos_token_id = first
    try:
        res = generate(trained, tokenizer, "the", max_new_tokens=5, temperature=0)
    finally:
        trained.config.eos_token_id = 2
    assert res.token_ids == [first] and res.finish_reason == "stop"


def test_stream_holds_back_partial_characters_and_stop_prefixes():
    byte_vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))  # one token per byte
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    ids = tok("héllo wörld ✓ end", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, stop=["d ✓"])
    pieces = [stream.push(ids[:i]) for i in range(1, len(ids) + 1)]
    pieces.append(stream.finish())
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == stream.text == "héllo wörl" and stream.stopped


def test_context_limit_truncates_prompt_from_the_left(tokenizer, trained):
    assert fit_context([1, 5, 6, 7, 8], 2, 5, bos_token_id=1) == ([1, 7, 8], 2)
    assert fit_context([5, 6, 7, 8], 2, 5) == ([6, 7, 8], 2)
    assert fit_context([1, 5, 6], 9, 5, bos_token_id=1) == ([6], 4)
    prompt = TEXT * 3  # 147 characters, context is 64
    res = generate(trained, tokenizer, prompt, max_new_tokens=10, temperature=0)
    assert res.prompt_tokens == CONTEXT - 10 and len(res.token_ids) == 10
    kept = [1] + tokenizer(prompt, add_special_tokens=False)["input_ids"][-(CONTEXT - 11):]
    assert res.token_ids == hf_greedy(trained, kept, 10)


def test_sampling_processors_match_hf():
    torch.manual_seed(0)
    logits = torch.randn(50) * 3
    prompt = [3, 7, 7, 20]
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt]), logits[None].clone())
    ref = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(10)(None, ref / 0.7))[0]
    want = ref.softmax(-1)
    draws = Sampler(50, prompt, temperature=0.7, top_k=10, top_p=0.8, repetition_penalty=1.3, seed=0)
    counts = torch.zeros(50)
    for _ in range(3000):
        draws.seen[:] = False  # keep the penalty set to the prompt so every draw sees the same distribution
        draws.seen[torch.tensor(prompt)] = True
        counts[draws(logits)] += 1
    assert set(counts.nonzero().flatten().tolist()) <= set(want.nonzero().flatten().tolist())
    torch.testing.assert_close(counts / counts.sum(), want, atol=0.03, rtol=0)


def test_decoder_is_rebuilt_when_weights_change(tokenizer):
    model = make_model(tokenizer, seed=9)
    first = get_decoder(model)
    assert get_decoder(model) is first
    with torch.no_grad():
        model.model.norm.weight.mul_(2.0)
    assert get_decoder(model) is not first
    ids = prompts(tokenizer)[0]
    assert list(generate_ids(model, ids, max_new_tokens=10, temperature=0)) == hf_greedy(model, ids, 10)


def test_stop_token_ids_end_the_text_like_eos(tokenizer, trained):
    free = generate(trained, tokenizer, "ab", max_new_tokens=5, temperature=0)
    first = free.token_ids[0]
    stopped = generate(trained, tokenizer, "ab", max_new_tokens=5, temperature=0, stop_token_ids=[first])
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"


def test_incremental_stream_equals_decoding_everything():
    # A byte-level BPE whose merges make multi-byte and space-led pieces: what streams out, piece by
    # piece, is exactly the decode of the whole sequence.
    from tokenizers import trainers

    text = "héllo wörld, the ✓ mark — naïve café 東京 " * 20
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for order in (ids, list(reversed(ids))):  # reversed: byte pieces arrive in odd orders too
        stream = TextStream(tok)
        pieces = [stream.push(order[:i]) for i in range(1, len(order) + 1)] + [stream.finish()]
        assert "".join(pieces) == tok.decode(order, clean_up_tokenization_spaces=False)


def test_batch_sampling_draws_what_each_sampler_would():
    torch.manual_seed(0)
    logits = torch.randn(6, 40) * 2
    def samplers():
        return [Sampler(40, [1], temperature=0.0), Sampler(40, [1], temperature=0.7, seed=1),
                Sampler(40, [1], temperature=1.3, seed=2), Sampler(40, [1], temperature=1.0, top_p=0.9, seed=3),
                Sampler(40, [1], temperature=0.9, repetition_penalty=1.2, seed=4), Sampler(40, [1], temperature=1.0, seed=5)]
    one_by_one, batched = samplers(), samplers()
    for _ in range(20):
        want = [sm(row) for sm, row in zip(one_by_one, logits, strict=True)]
        assert Sampler.sample_batch(batched, logits) == want
    assert want[0] == int(logits[0].argmax())
