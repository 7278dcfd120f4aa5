"""RoPE as transformers computes it, from its own frequency functions: the rotation of every position for the fast
decoder (runtime.fast_llama), cos and sin tables for the training Llama (models.llama).

Which scalings: HF computes inv_freq and an attention scaling (applied to cos and sin) once per model
for `linear`, `llama3` and `yarn`, so a precomputed table is exactly what its forward uses. `dynamic`
(NTK) recomputes only for sequences longer than max_position_embeddings, which the fast decoder never
runs (it stops at the context), so within the context it is the table computed at init, exact too.
`longrope` switches tables by sequence length and `proportional` is per layer type: those (and
partial rotary dims) stay on the HF module.
"""

from __future__ import annotations

import torch

EXACT_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def rope_parameters(config) -> dict:
    # transformers v5 keeps RoPE settings in rope_parameters; v4 in rope_theta + rope_scaling.
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def rope_reason(config) -> str | None:
    """Why the table below would not be HF's RoPE for `config`, or None."""
    params = rope_parameters(config)
    rope_type = params["rope_type"]
    if rope_type not in EXACT_ROPE_TYPES:
        return f"rope_type '{rope_type}' is not implemented (only {', '.join(EXACT_ROPE_TYPES)})"
    if float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0)) != 1.0:
        return "partial rotary embeddings are not implemented"
    return None


def inv_freq_and_scaling(config, head_dim: int) -> tuple[torch.Tensor, float]:
    """(inv_freq (head_dim / 2,) fp32, attention scaling) as the model's rotary embedding computes them."""
    rope_type = rope_parameters(config)["rope_type"]
    if rope_type == "default":  # HF's compute_default_rope_parameters (a method of each model's rotary class)
        theta = rope_parameters(config)["rope_theta"]
        return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim)), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, None)
    if inv_freq.shape != (head_dim // 2,):
        raise ValueError(f"RoPE gave {tuple(inv_freq.shape)} frequencies for head_dim {head_dim}")
    return inv_freq.float(), float(scaling)


def rope_rotations(config, head_dim: int, max_len: int) -> torch.Tensor:
    """RoPE rotation scaling * e^(i * pos * freq) for every position (max_len, head_dim / 2), complex64.

    cos and sin are computed as HF does (fp32 position * inv_freq, then times the attention scaling),
    so the rotation is HF's to float rounding; complex math stays fp32 even for bf16 models."""
    inv_freq, scaling = inv_freq_and_scaling(config, head_dim)
    freqs = torch.arange(max_len).float()[:, None] * inv_freq[None, :]  # (max_len, hd / 2)
    return torch.complex(freqs.cos() * scaling, freqs.sin() * scaling)
