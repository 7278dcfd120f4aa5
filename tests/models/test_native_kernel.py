"""llmkit's block int8 kernel (models/kernels/q8_matmul.c through models.native_kernel): what it computes, bounded
against the exact dequantized matmul, on the shapes and groups int8 files have; and the fallback to PyTorch's
kernel when it is turned off.

The bound: activations are quantized per block of 32 inputs to int8 with scale d = max|x_block| / 127, so each
input moves by at most d / 2 and an output by at most sum over blocks of d / 2 * sum |w| in the block (plus fp32
rounding). The weights are used as stored (no re-quantization)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from llmkit.models import native_kernel
from llmkit.models.quantized import QuantLinear
from llmkit.models.quantized_matmul import Int8BlockPacked, Int8Packed
from llmkit.optimize.quantize import quantize_model

pytestmark = pytest.mark.skipif(not native_kernel._cpu_has_avx2_fma(), reason="the kernel needs AVX2 and FMA")


def int8_layer(out_features: int, in_features: int, group: int, seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(in_features, out_features))
    model[0].weight.data[:, 3] *= 20  # a heavy input column, as pretrained LMs have
    model.get_output_embeddings = lambda: None
    quantize_model(model, "int8-weight", group)
    return model[0]


def bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(M, N): the most the block quantization of x can move each output."""
    m, k = x.shape
    step = x.abs().view(m, k // 32, 32).amax(-1) / 127 / 2  # (M, K / 32): half a step per block
    w_blocks = w.abs().view(w.shape[0], k // 32, 32).sum(-1)  # (N, K / 32)
    exact = x @ w.t()
    return step @ w_blocks.t() + 1e-5 * exact.abs().max() + 1e-6


@pytest.mark.parametrize("shape, group", [((48, 128), 32), ((50, 96), 32), ((960, 576), 64), ((33, 256), 128), ((7, 32), 32)])
@pytest.mark.parametrize("rows", [1, 3, 17])
def test_block_kernel_is_within_its_activation_rounding_of_the_exact_product(shape, group, rows):
    layer = int8_layer(*shape, group)
    packed = layer.packed()
    assert isinstance(packed, Int8BlockPacked)
    torch.manual_seed(rows)
    x = torch.randn(rows, shape[1])
    x[:, 5] = 300.0  # an outlier feature: its block's scale must not flatten the other blocks
    w = layer.weight_float()
    with torch.no_grad():
        got = layer(x) - layer.bias
    exact = x @ w.t()
    err = (got - exact).abs()
    assert bool((err <= bound(x, w)).all()), float((err - bound(x, w)).max())
    assert float(err.max()) > 0  # activations were quantized: the kernel ran, not a float matmul
    # one row at a time gives the same rows: no row's result depends on the others in the batch
    with torch.no_grad():
        alone = torch.cat([layer(x[i:i + 1]) for i in range(rows)])
    torch.testing.assert_close(alone, got + layer.bias, rtol=0, atol=0)


def test_blocks_away_from_an_outlier_keep_their_precision():
    layer = int8_layer(64, 256, 32)
    x = torch.randn(1, 256)
    x[0, 5] = 1e4
    w = layer.weight_float()
    with torch.no_grad():
        quiet = Int8BlockPacked(layer.codes(), layer.scales)(torch.cat([torch.zeros(1, 32), x[:, 32:]], 1))
    exact = torch.cat([torch.zeros(1, 32), x[:, 32:]], 1) @ w.t()
    # the same inputs without the outlier's block give the same small error: its scale stayed in its block
    assert float((quiet - exact).abs().max()) <= 0.01 * float(exact.abs().max())


def test_turned_off_it_falls_back_to_pytorchs_kernel():
    code = ("from llmkit.models.quantized import QuantLinear; import torch; "
            "l = QuantLinear(64, 16, 8, 32, bias=False); l.scales.fill_(0.01); print(type(l.packed()).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "LLMKIT_NATIVE": "0"}).stdout.strip()
    assert out == Int8Packed.__name__


@pytest.mark.parametrize("length", [1, 7, 300])
def test_attention_of_one_sequence_equals_sdpa_on_a_cache_slots_view(length):
    torch.manual_seed(length)
    nkv, n_rep, hd, capacity = 3, 3, 64, 512
    cache = torch.randn(2, 4, nkv, capacity, hd)  # (k/v, slots, heads, capacity, hd): a pool as FastLlama keeps it
    k, v = cache[0, 2, :, :length], cache[1, 2, :, :length]  # slot 2's first `length` positions: strided views
    q = torch.randn(nkv, n_rep, hd) * 0.2
    got = native_kernel.attend_one(q, k, v)
    want = torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None], scale=1.0)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_an_empty_batch_gives_an_empty_result():
    layer = int8_layer(16, 64, 32)
    with torch.no_grad():
        assert layer(torch.empty(0, 64)).shape == (0, 16)
