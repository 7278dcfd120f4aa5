"""Our training Llama computes exactly what transformers' LlamaForCausalLM computes with its weights."""

from __future__ import annotations

import pytest
import torch

from llmkit.models.llama import Llama
from llmkit.models.presets import PRESETS, count_parameters, llama_config


@pytest.mark.parametrize("overrides", [
    {},
    {"num_key_value_heads": 2},
    {"tie_word_embeddings": False},
    {"attention_bias": True, "mlp_bias": True, "rope_theta": 500.0},
])
def test_logits_equal_hf_llama_with_the_same_weights(overrides):
    torch.manual_seed(0)
    cfg = llama_config("nano", 97, 48, overrides={"hidden_size": 64, "intermediate_size": 96, **overrides})
    ours = Llama(cfg).eval()
    for p in ours.parameters():  # biases start at zero; make them matter
        torch.nn.init.normal_(p, std=0.05)
    hf = ours.to_hf()
    x = torch.randint(0, 97, (3, 48))
    with torch.no_grad():
        assert torch.allclose(ours(x), hf(input_ids=x).logits, atol=1e-5, rtol=1e-5)


def test_yarn_scales_cos_and_sin_by_its_attention_factor_as_hf_does():
    # YaRN multiplies cos and sin by 1 + 0.1 ln(factor) (1.14 here): q.k grows by its square. Weights large enough
    # for sharp attention, so that the factor shows (the same model without it is far off)
    yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 12}
    torch.manual_seed(0)
    cfg = llama_config("nano", 97, 48, overrides={"hidden_size": 64, "intermediate_size": 96, "rope_parameters": yarn})
    ours = Llama(cfg).eval()
    for p in ours.parameters():
        torch.nn.init.normal_(p, std=0.3)
    hf = ours.to_hf()
    x = torch.randint(0, 97, (2, 48))
    without = llama_config("nano", 97, 48, overrides={"hidden_size": 64, "intermediate_size": 96,
                                                     "rope_parameters": {**yarn, "attention_factor": 1.0}})
    plain = Llama(without).eval()
    plain.load_state_dict(ours.state_dict())
    with torch.no_grad():
        want = hf(input_ids=x).logits
        torch.testing.assert_close(ours(x), want, atol=1e-4, rtol=1e-4)
        assert (plain(x) - want).abs().max() > 100 * 1e-4


def test_tied_embeddings_stay_one_tensor_in_the_hf_model():
    hf = Llama(llama_config("nano", 50, 16)).to_hf()
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()


def test_presets_have_their_advertised_sizes():
    sizes = {name: count_parameters(Llama(llama_config(name, 4096, 256))) / 1e6 for name in PRESETS}
    assert 1.0 < sizes["nano"] < 2.0
    assert 9 < sizes["micro"] < 13
    assert 40 < sizes["small"] < 60
    assert 110 < sizes["base"] < 140


def test_a_sequence_longer_than_the_context_is_refused():
    model = Llama(llama_config("nano", 50, 16))
    with pytest.raises(ValueError, match="longer than the context"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_keeps_two_tensors_for_backward_and_gives_autograds_values_to_the_bit(dtype):
    from llmkit.models.llama import swiglu

    torch.manual_seed(0)
    gate_up = torch.randn(2, 8, 64, dtype=dtype, requires_grad=True)
    grad = torch.randn(2, 8, 32, dtype=dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    expected = torch.nn.functional.silu(gate) * up
    expected.backward(grad)
    expected_grad, gate_up.grad = gate_up.grad.clone(), None
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        gate, up = gate_up.chunk(2, dim=-1)
        out = swiglu(gate, up)
    out.backward(grad)
    assert torch.equal(out, expected) and torch.equal(gate_up.grad, expected_grad)
    # gate and up only, both views of the projection's output: no silu(gate) kept beside them
    assert len(kept) == 2 and all(t.untyped_storage().data_ptr() == gate_up.untyped_storage().data_ptr() for t in kept)
