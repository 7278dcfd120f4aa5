"""The LlamaConfig fields `pretrain.model` may override, known without importing transformers (it takes seconds), so a
misspelt one is said with the config file and a "did you mean" like any other unknown key, before any data is read
(models.presets checks again against the installed transformers when the model is built)."""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticCustomError

# LlamaConfig().to_dict() of transformers 5, and the names older versions took (rope_theta, rope_scaling, torch_dtype).
LLAMA_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size", "head_dim",
    "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling",
    "tie_word_embeddings", "attention_dropout", "attention_bias", "mlp_bias", "hidden_act", "initializer_range",
    "bos_token_id", "eos_token_id", "pad_token_id", "pretraining_tp", "use_cache", "dtype", "torch_dtype",
    "chunk_size_feed_forward", "is_encoder_decoder", "output_attentions", "output_hidden_states", "return_dict",
    "problem_type", "id2label", "label2id", "architectures", "model_type", "transformers_version", "_name_or_path",
)
SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")


def check_llama_fields(value: dict[str, Any]) -> dict[str, Any]:
    """`value` when each key is a LlamaConfig field; else the error config.files words as an unknown key."""
    for key in value:
        if key not in LLAMA_FIELDS:
            raise PydanticCustomError("unknown_llama_field", "unknown LlamaConfig field '{key}'", {"key": str(key)})
    return value
