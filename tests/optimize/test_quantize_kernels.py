"""Quantized models on PyTorch's weight-only CPU kernels (issue 18 item 8): QuantLinear and FastLlama compute
what the dequantize-then-matmul path computed, within the roundings the kernels add, and greedy decoding
gives the same tokens.

The tolerances: the kernels take bf16 activations and bf16 scales and return bf16, each a relative rounding
of at most 2^-9 (bf16 keeps 8 significant bits), so a layer's output may move by about 2^-8 of its largest
values; int8 stored in groups is re-quantized per row, which moves each weight by at most half a row step
(max|w_row| / 254). Both are bounded layer by layer below; through a whole model they compound, so there
the check is logits within 3 % of their range and identical greedy tokens on a trained model, whose
choices have margins (a wrong layout, a lost norm or bias, or a misplaced scale moves logits by far more).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from llmkit.models import native_kernel
from llmkit.models.quantized import QuantLinear, int8_head, pack_int4, quantize_tensor
from llmkit.models.quantized_matmul import Int8BlockPacked, per_row_int8
from llmkit.optimize.quantize import quantize_model
from llmkit.runtime.decoder import generate_ids, get_decoder
from llmkit.runtime.fast_llama import FastLlama
from tests import tiny_lm

one_thread = pytest.fixture(scope="module", autouse=True)(tiny_lm.single_thread)
tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)
trained = pytest.fixture(scope="module")(tiny_lm.train_tiny)

BF16_STEP = 2.0 ** -8  # bf16's relative spacing: one rounding is at most half of it


def quant_layer(bits: int, group: int, out_features: int = 48, in_features: int = 128, seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    lin = torch.nn.Linear(in_features, out_features)
    model = torch.nn.Sequential(lin)
    model.get_output_embeddings = lambda: None  # quantize_model skips a model's output head; this one has none
    quantize_model(model, "int8-weight" if bits == 8 else "int4-weight", group)
    return model[0]


def symmetric_int4_layer(group: int) -> QuantLinear:
    """An int4 layer as files written before zero points hold it: symmetric codes, no zeros."""
    torch.manual_seed(1)
    w = torch.randn(48, 128)
    layer = QuantLinear(128, 48, 4, group, bias=False)
    codes, scales = quantize_tensor(w, 4, group)
    layer.qweight.copy_(pack_int4(codes))
    layer.scales.copy_(scales)
    return layer


@pytest.mark.parametrize("bits, group", [(8, 128), (8, 32), (4, 32), (4, 64), ("4-symmetric", 64)])
def test_kernel_forward_matches_the_dequantized_matmul(bits, group):
    layer = symmetric_int4_layer(group) if bits == "4-symmetric" else quant_layer(bits, group)
    assert layer.packed() is not None
    x = torch.randn(5, 128)
    with torch.no_grad():
        got, exact = layer(x), layer.forward_dequantized(x)
    # bf16 input, scales and output: a few roundings of 2^-9 of the largest terms
    bound = 3 * BF16_STEP * float(exact.abs().max()) + 1e-4
    if bits == 8 and group < 128:
        # plus the per-row re-quantization: each weight within half a row step, summed over |x|
        row_step = layer.weight_float().abs().amax(-1) / 127
        bound += float((x.abs().sum(-1, keepdim=True) * row_step / 2).max())
    assert float((got - exact).abs().max()) <= bound
    assert float((got - exact).abs().max()) > 0  # the kernel ran (the dequantized path would be identical)


def test_per_row_requantization_stays_within_half_a_row_step():
    layer = quant_layer(8, 32)
    codes, rows = per_row_int8(layer.codes(), layer.scales)
    w = layer.weight_float()
    assert codes.dtype == torch.int8 and rows.shape == (48,)
    assert float(((codes.float() * rows[:, None] - w).abs() - rows[:, None] / 2).max()) <= 1e-6


def test_gradients_still_flow_through_the_dequantized_path():
    layer = quant_layer(4, 32)
    x = torch.randn(3, 128, requires_grad=True)
    layer(x).sum().backward()  # the kernels have no backward; this must not raise
    torch.testing.assert_close(x.grad, layer.weight_float().sum(0).expand(3, -1))


def test_int8_dynamic_quantizes_each_row_on_its_own_range_whatever_shares_its_batch():
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 48)
    model = torch.nn.Sequential(lin)
    model.get_output_embeddings = lambda: None
    quantize_model(model, "int8-dynamic", 128)
    layer = model[0]
    x = torch.randn(1, 128)
    outlier = torch.randn(3, 128)
    outlier[:, 5] = 400.0  # one huge feature, as pretrained LMs have: a per-tensor scale would flatten x
    with torch.no_grad():
        alone, batched = layer(x), layer(torch.cat([outlier[:2], x, outlier[2:]]))[2:3]
        exact = F.linear(x, layer.weight_float(), layer.bias)
    assert torch.equal(alone, batched)  # greedy answers must not depend on other requests in the batch
    assert float((alone - exact).abs().max()) <= 0.02 * float(exact.abs().max())


def dequantized_copy(model):
    """The same model with every QuantLinear back as an nn.Linear of its dequantized weight: the old path."""
    plain = copy.deepcopy(model)
    for name, module in list(plain.named_modules()):
        if isinstance(module, QuantLinear):
            lin = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            lin.weight.data = module.weight_float()
            if module.bias is not None:
                lin.bias.data = module.bias.data.clone()
            parent, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent), child, lin)
    return plain


@pytest.mark.parametrize("method", ["int8-dynamic", "int8-weight", "int4-weight"])
def test_fast_llama_runs_quantized_models_like_the_dequantized_path(tokenizer, trained, method):
    model = copy.deepcopy(trained)
    quantize_model(model, method, 32)
    if method == "int8-weight":
        int8_head(model, 32)  # as load_quantized does: the head on the block kernel too, where it runs
    reference = dequantized_copy(model)
    decoder = get_decoder(model)
    assert isinstance(decoder, FastLlama)  # before: "the linear layers are quantized" sent it to the HF module
    if method == "int8-weight" and native_kernel.available():
        assert isinstance(model.lm_head, QuantLinear) and isinstance(decoder.lm_head_t.packed, Int8BlockPacked)
    ids = [1] + tokenizer("the dog sat on the mat. the cat", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        exact = reference(input_ids=torch.tensor([ids])).logits[0]  # (T, vocab)
        hf_kernels = model(input_ids=torch.tensor([ids])).logits[0]
    state, logits = decoder.prefill(ids[:10])
    got = [logits] + [decoder.step([state], [t])[0] for t in ids[10:]]
    got = torch.stack(got)
    spread = float(exact.max() - exact.min())
    assert float((got - exact[9:]).abs().max()) <= 0.03 * spread
    # FastLlama and QuantLinear's own forward run the same kernels on the same codes: closer still
    assert float((got - hf_kernels[9:]).abs().max()) <= 0.01 * spread
    for prompt in tiny_lm.prompts(tokenizer):
        ours = list(generate_ids(model, prompt, max_new_tokens=24, temperature=0))
        assert_same_greedy_until_a_near_tie(reference, prompt, ours, tiny_lm.hf_greedy(reference, prompt, 24),
                                            0.01 * spread)


def assert_same_greedy_until_a_near_tie(reference, prompt: list[int], ours: list[int], theirs: list[int], error: float):
    """Greedy tokens equal the reference's up to the first step whose top two reference logits are closer than
    twice the error the kernels are allowed (there either choice is right); that step must exist if they differ."""
    diverged = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b), None)
    if diverged is None:
        return
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([prompt + theirs[:diverged]])).logits[0, -1]
    top = logits.topk(2).values
    assert float(top[0] - top[1]) <= 2 * error, f"greedy tokens differ at {diverged} where the reference's margin is " \
                                                f"{float(top[0] - top[1]):.4f}, above the kernels' error {error:.4f}"
    assert int(logits.argmax()) == theirs[diverged]


def test_symmetric_int4_files_from_before_zero_points_still_load(tmp_path, tokenizer):
    from safetensors.torch import save_file

    from llmkit.models.quantized import linears, load_quantized

    model = tiny_lm.make_model(tokenizer, seed=3)
    names = list(linears(model))
    state = {k: v for k, v in model.state_dict().items() if k not in {f"{n}.weight" for n in names} | {"lm_head.weight"}}
    for n in names:  # the old writer: symmetric codes and scales, no zeros, no "zero_point" in the info
        codes, scales = quantize_tensor(model.get_submodule(n).weight.data, 4, 32)
        state[f"{n}.qweight"], state[f"{n}.scales"] = pack_int4(codes), scales
    save_file(state, str(tmp_path / "model.safetensors"))
    model.config.save_pretrained(tmp_path)
    lm = load_quantized(tmp_path, {"method": "int4-weight", "bits": 4, "group_size": 32, "modules": names})
    assert all(lm.get_submodule(n).zeros is None for n in names)
    assert isinstance(get_decoder(lm), FastLlama)
    prompt = tiny_lm.prompts(tokenizer)[0]
    assert list(generate_ids(lm, prompt, max_new_tokens=8, temperature=0)) == \
        tiny_lm.hf_greedy(dequantized_copy(lm), prompt, 8)


def test_an_fp16_head_runs_on_fbgemm_with_the_fp32_heads_logits(tokenizer, trained):
    # A quantized file stores the head fp16; its values then fit fp16 exactly, and the head runs on fbgemm's
    # fp16 matmul (fp32 activations and sums): the same logits as the fp32 head to float rounding.
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.lm_head.weight.half().float())  # tied: the embedding too
    fast = FastLlama(model)
    assert type(fast.lm_head_t).__name__ == "QuantMatmul"
    ids = tiny_lm.prompts(tokenizer)[2]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(fast.prefill(ids)[1], ref, atol=1e-4, rtol=0)
    assert isinstance(FastLlama(trained).lm_head_t, torch.Tensor)  # fp32 values that fp16 can't hold: fp32 head
