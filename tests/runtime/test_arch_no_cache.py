"""A causal LM transformers loads but that keeps no KV cache (OpenAI GPT) decodes through the HF module: it read
`out['cache']` and failed with KeyError: 'cache'; now it reads its whole sequence again at each token."""

from __future__ import annotations

import pytest
import torch

from llmkit.runtime.decoder import generate_ids, get_decoder
from tests import tiny_lm


@pytest.fixture(scope="module")
def gpt1():
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    torch.manual_seed(0)
    config = OpenAIGPTConfig(vocab_size=len(tiny_lm.char_tokenizer()), n_embd=32, n_layer=2, n_head=4, n_positions=32)
    return OpenAIGPTLMHeadModel(config).eval()


def test_a_model_without_a_kv_cache_decodes_as_hf_generate_does(gpt1):
    prompt = [5, 9, 7, 11, 6]
    with torch.no_grad():
        expected = gpt1.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)[0, len(prompt):].tolist()
    assert list(generate_ids(gpt1, prompt, max_new_tokens=10, temperature=0)) == expected


def test_past_its_context_the_window_shifts_without_a_cache(gpt1):
    # 40 new tokens with a 32-position model: the prefill after the shift starts a fresh sequence
    out = list(generate_ids(gpt1, [5, 9, 7], max_new_tokens=40, temperature=0))
    assert len(out) == 40
    dec = get_decoder(gpt1)
    state, _ = dec.prefill([5, 9, 7])
    dec.step([state], [out[0]])
    assert state.cache is None and state.ids == [5, 9, 7, out[0]] and state.length == 4
