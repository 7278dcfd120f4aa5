"""FastLlama on the Llama family (issue 18 item 3): Llama, Mistral, Qwen2 (q/k/v biases), Qwen3 (q/k norms)
and RoPE scaling (linear, dynamic, llama3, yarn) decode with HF's logits; what it does not run (a short
sliding window, another architecture) goes through the HF module, in `llmkit generate` and a real
`llmkit serve` alike: a speed difference, never an error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as hf

from llmkit.runtime.decoder import HFDecoder, generate_ids, get_decoder
from llmkit.runtime.fast_llama import FastLlama
from tests import tiny_lm
from tests.conftest import run_cli, serving_url
from tests.tiny_lm import hf_greedy

one_thread = pytest.fixture(scope="module", autouse=True)(tiny_lm.single_thread)

# hidden 64, 2 layers, 4 heads, 2 kv heads, vocab 256; weights larger than the default init so attention
# is sharp and RoPE matters (a wrong rotation moves the logits by far more than the tolerance).
COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.15, tie_word_embeddings=False)
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 500000.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
ROPES = {"linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
         "dynamic": {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0},
         "llama3": LLAMA3,
         "yarn": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 32}}


def family_config(arch: str, rope: str = "default"):
    rope_parameters = ROPES.get(rope, {"rope_type": "default", "rope_theta": 10000.0})
    if arch == "llama":
        return hf.LlamaConfig(**COMMON, rope_parameters=rope_parameters)
    if arch == "mistral":  # an explicit head_dim unlike hidden / heads; no window
        return hf.MistralConfig(**COMMON, head_dim=32, sliding_window=None, rope_parameters=rope_parameters)
    if arch == "qwen2":
        return hf.Qwen2Config(**COMMON, rope_parameters=rope_parameters)
    return hf.Qwen3Config(**COMMON, head_dim=16, rope_parameters=rope_parameters)


def tiny(config, seed: int = 0):
    torch.manual_seed(seed)
    model = hf.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # norm weights (q/k norms too) and biases away from 1 and 0, so folding them is tested
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name else 0.0))
    return model


def check_logits(model, ids: list[int], atol: float = 1e-4) -> torch.Tensor:
    """FastLlama's prefill, chunked prefill and steps give HF's logits at every position; returns HF's."""
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0]  # (T, vocab)
    fast = get_decoder(model)
    assert isinstance(fast, FastLlama)
    state, logits = fast.prefill(ids[:5])
    got = [logits]
    state, logits = fast.prefill(ids[5:12], state=state)
    got.append(logits)
    for tok in ids[12:]:
        got.append(fast.step([state], [tok])[0])
    torch.testing.assert_close(torch.stack(got), torch.stack([ref[4], *ref[11:]]), atol=atol, rtol=0)
    return ref


IDS = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(0)).tolist()


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_family_decodes_with_hf_logits(arch):
    model = tiny(family_config(arch))
    check_logits(model, IDS)
    if arch == "qwen2":
        assert model.model.layers[0].self_attn.q_proj.bias is not None
    if arch == "qwen3":
        assert model.model.layers[0].self_attn.q_norm is not None
    prompt = IDS[:6]
    assert list(generate_ids(model, prompt, max_new_tokens=12, temperature=0)) == hf_greedy(model, prompt, 12)


@pytest.mark.parametrize("rope", list(ROPES))
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_rope_scaling_decodes_with_hf_logits(arch, rope):
    model = tiny(family_config(arch, rope))
    ref = check_logits(model, IDS)
    if rope != "dynamic":  # dynamic NTK equals default RoPE within the context: that is what makes it exact here
        plain = tiny(family_config(arch))
        with torch.no_grad():
            unscaled = plain(input_ids=torch.tensor([IDS])).logits[0]
        assert (unscaled - ref).abs().max() > 1e-2  # the test can tell a scaled rotation from the default one


def test_sliding_window_shorter_than_context_runs_on_hf():
    model = tiny(hf.MistralConfig(**COMMON, sliding_window=8))
    decoder = get_decoder(model)
    assert isinstance(decoder, HFDecoder)
    prompt = IDS[:12]  # longer than the window, so the window shapes the answer
    assert list(generate_ids(model, prompt, max_new_tokens=10, temperature=0)) == hf_greedy(model, prompt, 10)


# -- outside the family: a tiny GPT-2 through `llmkit generate` and a real `llmkit serve` --------------


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"
    tokenizer = tiny_lm.char_tokenizer()
    torch.manual_seed(0)
    config = hf.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=1,
                           eos_token_id=2, initializer_range=0.2)
    hf.GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_other_architecture_generates_and_serves_through_hf(gpt2_folder: Path, tmp_path: Path):
    model = hf.AutoModelForCausalLM.from_pretrained(gpt2_folder).eval()
    assert isinstance(get_decoder(model), HFDecoder)
    out = run_cli("generate", str(gpt2_folder), "--prompt", "the cat", "--max-new-tokens", "8", "--temperature", "0",
                  "--json", workspace=tmp_path / "ws", timeout=180)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    import json

    generated = json.loads(out.stdout)["text"]
    assert generated

    import openai

    env = {**os.environ, "LLMKIT_HOME": str(tmp_path / "ws")}
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", f"tiny-gpt2={gpt2_folder}", "--port", "0",
                             "--no-ui"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = serving_url(proc)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        answer = client.completions.create(model="tiny-gpt2", prompt="the cat", max_tokens=8, temperature=0)
        assert answer.choices[0].text == generated  # greedy through the HF decoder, served as generated
        assert answer.usage.completion_tokens == 8
    finally:
        proc.terminate()
        proc.wait(timeout=60)
