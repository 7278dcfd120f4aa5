"""Many LoRA adapters on one base, per row: a batch mixing the bare base and several adapters (real PEFT adapters
on tiny real Llamas, with and without GQA and q/k/v biases) gives each row the logits of its adapter's merged model,
and greedy decoding equals the merged model's token for token; prefill, batched prefill and pooled steps alike."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from llmkit.errors import UserError
from llmkit.runtime.batch import torch_decoder
from llmkit.runtime.decoder import get_decoder
from llmkit.runtime.fast_llama import FastLlama
from llmkit.runtime.lora_rows import AdapterSet, read_adapter
from tests import tiny_lm

one_thread = pytest.fixture(scope="module", autouse=True)(tiny_lm.single_thread)
tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)

TARGETS = [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
           ["k_proj", "down_proj"]]


def _adapters(base, folder, ranks=(4, 8, 2)) -> list[tuple]:
    """Three PEFT adapters with random (non-zero) B, saved as PEFT saves them, and each one's merged model."""
    import copy

    out = []
    for n, (targets, r) in enumerate(zip(TARGETS, ranks, strict=True)):
        torch.manual_seed(100 + n)
        peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.3)
        path = folder / f"a{n}"
        peft.save_pretrained(str(path))
        out.append((path, peft.merge_and_unload().eval()))
    return out


@pytest.fixture(scope="module", params=["gqa", "qkv-bias"])
def setup(request, tokenizer, tmp_path_factory):
    extra = {"num_key_value_heads": 2} if request.param == "gqa" else {"attention_bias": True}
    base = tiny_lm.make_model(tokenizer, seed=3, **extra)
    with torch.no_grad():  # RMSNorm weights other than 1, which the layout folds into A
        for layer in base.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    if request.param == "qkv-bias":
        with torch.no_grad():
            for layer in base.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.2)
    adapters = _adapters(base, tmp_path_factory.mktemp("adapters"))
    fast = FastLlama(base)  # its own instance: the adapters set here stay out of get_decoder's cache
    fast.adapters = AdapterSet.of({k + 1: read_adapter(path, f"a{k}", base, fast.dtype)
                                   for k, (path, _) in enumerate(adapters)})
    return base, fast, [merged for _, merged in adapters]


def _prompt(tokenizer, text="the cat sat on the mat."):
    return tokenizer(text)["input_ids"]


def test_each_row_gets_its_adapters_merged_logits(tokenizer, setup):
    base, fast, merged = setup
    ids = _prompt(tokenizer)
    models = [base, *merged]
    states = [fast.new_state(40) for _ in models]
    for k, state in enumerate(states):
        state.adapter = k
    logits = fast.prefill_many([ids] * len(models), states)
    nxt = [5, 7, 9, 11]
    stepped = fast.step(states, nxt)
    for k, model in enumerate(models):
        ref = get_decoder(model)
        want_state, want = ref.prefill(ids, capacity=40)
        torch.testing.assert_close(logits[k], want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(stepped[k], ref.step([want_state], [nxt[k]])[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits[0], logits[2], atol=1e-3), "an adapter should change the model"


def test_mixed_pooled_batch_decodes_like_each_merged_model(tokenizer, setup):
    base, fast, merged = setup
    prompts = [_prompt(tokenizer, t) for t in ("the cat", "the dog sat", "on the mat", "the log", "a cat")]
    adapters = [0, 1, 2, 3, 1]
    dec = torch_decoder(base, 8)
    dec_fast = get_decoder(base)
    saved, dec_fast.adapters = dec_fast.adapters, fast.adapters
    try:
        states, logits = dec.prefill_many(prompts, [32] * len(prompts), adapters)
        got = [[int(x)] for x in logits.argmax(-1)]
        for _ in range(12):
            nxt = dec.step(states, [g[-1] for g in got]).argmax(-1)
            for g, t in zip(got, nxt.tolist(), strict=True):
                g.append(t)
    finally:
        dec_fast.adapters = saved
    models = [base, *merged]
    for ids, a, out in zip(prompts, adapters, got, strict=True):
        out = out[:out.index(2) + 1] if 2 in out else out  # generate() stops at EOS
        assert out == tiny_lm.hf_greedy(models[a], ids, 13), f"adapter {a}"
    assert len({tuple(g) for g in got[:4]}) > 1


def test_an_adapter_that_tunes_the_head_is_refused(tokenizer, tmp_path):
    base = tiny_lm.make_model(tokenizer, seed=4)
    peft = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    peft.save_pretrained(str(tmp_path / "a"))
    with pytest.raises(UserError, match="lm_head.*merged"):
        read_adapter(tmp_path / "a", "a", tiny_lm.make_model(tokenizer, seed=4), torch.float32)
