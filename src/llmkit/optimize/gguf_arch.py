"""What the GGUF writer needs to know per architecture: llama.cpp's name for it, its tensor names, how its RoPE
is laid out and scaled, and which pre-tokenizer llama.cpp must split text with.

Two RoPE layouts: Hugging Face rotates the two halves of each head (i, i + d/2); llama.cpp's `llama` rotates
adjacent pairs (2i, 2i + 1), so Llama and Mistral have the rows of q_proj and k_proj (and their biases)
permuted per head, which leaves the attention scores unchanged. llama.cpp's `qwen2` and `qwen3` rotate halves
("NEOX" style) like Hugging Face: their weights go over as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llmkit.errors import UserError


@dataclass(frozen=True)
class GgufArch:
    name: str            # llama.cpp's architecture (general.architecture, the prefix of its keys)
    permute_qk: bool     # llama.cpp rotates adjacent pairs: q/k rows reordered (see the module's docstring)
    qk_norm: bool        # per-head RMSNorm of q and k before RoPE (Qwen3)
    attention_bias: bool  # llama.cpp reads q/k/v/o biases for this architecture


ARCHITECTURES = {
    "LlamaForCausalLM": GgufArch("llama", permute_qk=True, qk_norm=False, attention_bias=True),
    "MistralForCausalLM": GgufArch("llama", permute_qk=True, qk_norm=False, attention_bias=True),
    "Qwen2ForCausalLM": GgufArch("qwen2", permute_qk=False, qk_norm=False, attention_bias=True),  # q/k/v biases always
    "Qwen3ForCausalLM": GgufArch("qwen3", permute_qk=False, qk_norm=True, attention_bias=False),
}
FAMILIES = "Llama, SmolLM, Mistral, Qwen2/Qwen2.5, Qwen3"
ROPE_TYPES = ("default", "linear", "llama3")


def arch_of(config: dict) -> GgufArch | None:
    return next((ARCHITECTURES[a] for a in config.get("architectures") or [] if a in ARCHITECTURES), None)


def rope_parameters(config: dict) -> dict[str, Any]:
    """transformers 5 keeps RoPE in `rope_parameters`; older configs in `rope_scaling` (+ `rope_theta`)."""
    params = {**(config.get("rope_scaling") or {}), **(config.get("rope_parameters") or {})}
    params.setdefault("rope_type", params.get("type") or "default")
    params.setdefault("rope_theta", config.get("rope_theta") or 10000.0)
    return params


def unsupported(config: dict, arch: GgufArch) -> list[str]:
    """What in this config llama.cpp would run differently from transformers (empty: nothing)."""
    found = []
    rope_type = rope_parameters(config)["rope_type"]
    if rope_type not in ROPE_TYPES or (rope_type == "llama3" and arch.name != "llama"):
        found.append(f"rope scaling '{rope_type}' (written: {', '.join(ROPE_TYPES)}; llama3 for Llama only)")
    if config.get("attention_bias") and not arch.attention_bias:
        found.append("attention_bias")
    if config.get("mlp_bias"):
        found.append("mlp_bias")
    return found


def context_length(config: dict) -> int:
    """The context llama.cpp is told the model has. llama.cpp's `llama`/`qwen2` attend to the whole context; a
    model trained with a sliding window (Mistral 7B v0.1: 4,096 of 32,768) attends alike up to the window, so
    the window is the context within which the GGUF computes what transformers does."""
    length = config["max_position_embeddings"]
    window = config.get("sliding_window")
    layer_types = config.get("layer_types")
    slides = "sliding_attention" in layer_types if layer_types else (config.get("use_sliding_window", True) is not False)
    return min(length, window) if window and slides else length


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def add_hyper_parameters(writer, config: dict, arch: GgufArch) -> None:
    import gguf

    rope = rope_parameters(config)
    writer.add_context_length(context_length(config))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":  # positions divided by the factor, in both
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(config["vocab_size"])


def llama3_rope_factors(config: dict) -> np.ndarray:
    """Llama 3.1's RoPE scaling as llama.cpp takes it: a divisor per frequency (`rope_freqs.weight`). Frequencies
    whose wavelength is below the original context / high_freq_factor are kept, those above / low_freq_factor
    divided by `factor`, and those between blended smoothly (transformers' `_compute_llama3_parameters`)."""
    rope, dim = rope_parameters(config), head_dim(config)
    inv_freq = 1.0 / float(rope["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
    original = float(rope["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    smooth = (original / wavelen - low) / (high - low)
    scaled = np.where(wavelen > original / low, inv_freq / factor, inv_freq)
    medium = (wavelen <= original / low) & (wavelen >= original / high)
    scaled = np.where(medium, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    return (inv_freq / scaled).astype(np.float32)


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of each head from (half, pair) order to interleaved pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensors(config: dict, weights: dict[str, torch.Tensor], arch: GgufArch) -> list[tuple[str, np.ndarray]]:
    """llama.cpp's tensors from the checkpoint's; a checkpoint tensor left over is refused, not dropped."""
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    used: set[str] = set()

    def get(name: str) -> np.ndarray:
        used.add(name)
        return weights[name].float().numpy()

    out = [("token_embd.weight", get("model.embed_tokens.weight"))]
    if rope_parameters(config)["rope_type"] == "llama3":
        out.append(("rope_freqs.weight", llama3_rope_factors(config)))
    attention = (("q_proj", "attn_q", n_head), ("k_proj", "attn_k", n_kv), ("v_proj", "attn_v", 0), ("o_proj", "attn_output", 0))
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.append((f"blk.{i}.attn_norm.weight", get(p + "input_layernorm.weight")))
        for hf, ours, heads in attention:
            for kind in ("weight", "bias"):
                if f"{p}self_attn.{hf}.{kind}" in weights:
                    w = get(f"{p}self_attn.{hf}.{kind}")
                    out.append((f"blk.{i}.{ours}.{kind}", permute_rope(w, heads) if heads and arch.permute_qk else w))
        if arch.qk_norm:
            out += [(f"blk.{i}.attn_q_norm.weight", get(p + "self_attn.q_norm.weight")),
                    (f"blk.{i}.attn_k_norm.weight", get(p + "self_attn.k_norm.weight"))]
        out += [
            (f"blk.{i}.ffn_norm.weight", get(p + "post_attention_layernorm.weight")),
            (f"blk.{i}.ffn_gate.weight", get(p + "mlp.gate_proj.weight")),
            (f"blk.{i}.ffn_up.weight", get(p + "mlp.up_proj.weight")),
            (f"blk.{i}.ffn_down.weight", get(p + "mlp.down_proj.weight")),
        ]
    out.append(("output_norm.weight", get("model.norm.weight")))
    if "lm_head.weight" in weights:
        used.add("lm_head.weight")
        if not config.get("tie_word_embeddings", False):
            out.append(("output.weight", get("lm_head.weight")))  # tied models reuse token_embd in llama.cpp
    left = sorted(set(weights) - used - {k for k in weights if k.endswith("rotary_emb.inv_freq")})
    if left:
        raise UserError(f"GGUF export has no llama.cpp tensor for {', '.join(left[:3])}"
                        f"{f' (and {len(left) - 3} more)' if len(left) > 3 else ''}: use llama.cpp's convert_hf_to_gguf.py")
    return out


# -- pre-tokenizers: how llama.cpp splits text before byte-level BPE -----------------------------------------

_QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = _QWEN2_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
PRE_TOKENIZERS = {_QWEN2_SPLIT: "qwen2", _LLAMA3_SPLIT: "llama-bpe"}


def _parts(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    return [q for p in pre.get("pretokenizers", []) for q in _parts(p)] if pre.get("type") == "Sequence" else [pre]


def pre_tokenizer(spec: dict) -> str | None:
    """llama.cpp's name for a byte-level BPE tokenizer's splitting (`tokenizer.ggml.pre`), from tokenizer.json:
    GPT-2's (ByteLevel's own regex: llmkit's, SmolLM2's), Qwen2's (Qwen2, Qwen2.5, Qwen3) or Llama 3's split
    regex; None for a split llama.cpp is not known to make the same way."""
    parts = _parts(spec.get("pre_tokenizer"))
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    splits = [p for p in parts if p.get("type") == "Split"]
    if byte_level and byte_level[0].get("use_regex", True) and not splits:
        return "gpt-2"
    if len(splits) == 1 and byte_level and not byte_level[0].get("use_regex", True):
        return PRE_TOKENIZERS.get((splits[0].get("pattern") or {}).get("Regex"))
    return None
