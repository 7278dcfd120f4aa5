"""Model sizes as Hugging Face LlamaConfig: RoPE, RMSNorm, SwiGLU, tied embeddings by default.

Parameter counts are given at a 4,096-token vocabulary; the real vocabulary comes from the
dataset's tokenizer.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import LlamaConfig

from llmkit.errors import UserError

PRESETS: dict[str, dict[str, Any]] = {
    # ~1.4M: the test and laptop size.
    "nano": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=384),
    # ~11M
    "micro": dict(hidden_size=256, num_hidden_layers=12, num_attention_heads=8, intermediate_size=768),
    # ~48M
    "small": dict(hidden_size=512, num_hidden_layers=12, num_attention_heads=8, intermediate_size=1792),
    # ~126M
    "base": dict(hidden_size=768, num_hidden_layers=16, num_attention_heads=12, intermediate_size=2304),
}


def model_fields(preset: str, vocab_size: int, context: int, *, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, pad_token_id: int | None = None, dropout: float = 0.0,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The LlamaConfig fields of a preset, as a plain dict (no transformers import: it takes seconds)."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}'; presets: {', '.join(PRESETS)}")
    fields: dict[str, Any] = dict(
        PRESETS[preset],
        vocab_size=vocab_size,
        max_position_embeddings=context,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_dropout=dropout,
        attention_bias=False,
        mlp_bias=False,
        hidden_act="silu",
        initializer_range=0.02,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=True,
    )
    fields["num_key_value_heads"] = fields["num_attention_heads"]
    if overrides:
        from transformers import LlamaConfig

        unknown = set(overrides) - set(LlamaConfig().to_dict()) - set(fields)
        if unknown:
            raise UserError(f"pretrain.model: unknown LlamaConfig field(s) {', '.join(sorted(unknown))}")
        # Sizes the model cannot be built with, said here (they were an IndexError or a ZeroDivisionError, exit 1)
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size"):
            if key in overrides and (not isinstance(overrides[key], int) or isinstance(overrides[key], bool) or overrides[key] < 1):
                raise UserError(f"pretrain.model.{key} = {overrides[key]!r}: it must be a whole number of at least 1",
                                param=f"pretrain.model.{key}")
        wanted = overrides.get("vocab_size", vocab_size)
        if not isinstance(wanted, int) or wanted < vocab_size:  # a larger one (padded for speed) is fine
            raise UserError(f"pretrain.model.vocab_size = {wanted!r}: the dataset's tokenizer has {vocab_size} tokens, so "
                            f"it must be at least {vocab_size}; leave it out to use that", param="pretrain.model.vocab_size")
        fields.update(overrides)
        if fields["num_attention_heads"] % fields["num_key_value_heads"]:
            raise UserError(f"pretrain.model: num_attention_heads {fields['num_attention_heads']} is not divisible by "
                            f"num_key_value_heads {fields['num_key_value_heads']}", param="pretrain.model")
    if fields["hidden_size"] % fields["num_attention_heads"]:
        raise UserError(f"pretrain.model: hidden_size {fields['hidden_size']} is not divisible by num_attention_heads {fields['num_attention_heads']}")
    return fields


def llama_config(preset: str, vocab_size: int, context: int, **kwargs: Any) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(**model_fields(preset, vocab_size, context, **kwargs))


def plain_config(fields: dict[str, Any]) -> SimpleNamespace:
    """Attribute access to config fields for our own Llama, without building a LlamaConfig."""
    return SimpleNamespace(**fields)


def hf_config_json(fields: dict[str, Any]) -> dict[str, Any]:
    """config.json of a LlamaForCausalLM with these fields: what from_pretrained reads back."""
    import transformers

    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "float32",
            "transformers_version": transformers.__version__, "head_dim": fields["hidden_size"] // fields["num_attention_heads"],
            **fields}


def count_parameters(model) -> int:
    # Tied embeddings are one tensor; count unique storage once.
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
