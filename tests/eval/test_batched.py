"""Greedy replies for the gate: a Llama on the runtime's batched decoder, anything else through HF's generate, and
both the same greedy tokens as decoding each prompt alone."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llmkit.eval.batched import greedy_replies
from llmkit.runtime.decoder import _DECODERS
from tests import tiny_lm

one_thread = pytest.fixture(scope="module", autouse=True)(tiny_lm.single_thread)
tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)
trained = pytest.fixture(scope="module")(tiny_lm.train_tiny)

PROMPTS = ["the cat", "a", "dog sat on the log", "the mat. the"]


def _alone(model, tokenizer, prompt: str, n: int, end: set[int]) -> str:
    ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out = tiny_lm.hf_greedy(model, ids, n)
    cut = next((i for i, t in enumerate(out) if t in end), len(out))
    return tokenizer.decode(out[:cut], skip_special_tokens=True)


def test_a_llama_batch_gives_each_prompt_its_own_greedy_reply_and_its_own_end(trained, tokenizer) -> None:
    # an end-of-turn token that the greedy text reaches at different steps in different rows
    end = tokenizer.convert_tokens_to_ids(".")
    replies = greedy_replies(trained, tokenizer, PROMPTS, 12, end_ids=[end], batch_size=4)
    assert replies == [_alone(trained, tokenizer, p, 12, {end, tokenizer.eos_token_id}) for p in PROMPTS]
    assert len({len(r) for r in replies}) > 1  # the rows did end apart
    assert trained in _DECODERS  # decoded on FastLlama (which `generate` and `serve` decode with), not HF's generate


def test_a_model_the_fast_decoder_does_not_run_replies_through_hf_generate(tokenizer) -> None:
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    replies = greedy_replies(gpt2, tokenizer, PROMPTS[:2], 8, batch_size=1)
    assert replies == [_alone(gpt2, tokenizer, p, 8, {2}) for p in PROMPTS[:2]]


def test_eval_generation_in_batches_gives_what_generate_gives_one_prompt_at_a_time(trained, tokenizer) -> None:
    from llmkit.eval.generation import generate_all
    from llmkit.generate import generate

    outputs = generate_all(trained, tokenizer, PROMPTS, 10, chat=False)
    alone = [generate(trained, tokenizer, p, max_new_tokens=10, temperature=0.0) for p in PROMPTS]
    assert [o["prediction"] for o in outputs] == [r.text for r in alone]
    assert [o["tokens"] for o in outputs] == [len(r.token_ids) for r in alone]
