"""`llmkit export --format gguf`: llmkit's Llama models as GGUF files that llama.cpp and Ollama run.

Written with the `gguf` package's writer: llama.cpp's Llama hyper-parameters, the weights under
llama.cpp's tensor names (f32, f16, q8_0 or q4_0), and the tokenizer — byte-level BPE as llama.cpp's
`gpt2` model with its merges, and character-level
vocabularies as the same model with one token per character (their bytes joined by merges).
Beside it, an Ollama `Modelfile`. The chat template travels in the GGUF (`tokenizer.chat_template`), with the
token that ends an assistant turn as `tokenizer.ggml.eot_token_id`, and in the Modelfile translated to Go
(`optimize.chat_format`).

RoPE layout: Hugging Face Llama rotates the two halves of each head (i, i + d/2), llama.cpp's
Llama rotates adjacent pairs (2i, 2i + 1); permuting the rows of q_proj and k_proj per head turns
one into the other, so the attention scores are the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmkit.errors import UserError
from llmkit.models.files import check_weights
from llmkit.models.io import Model, is_adapter
from llmkit.models.pretrained import chat_template_of
from llmkit.optimize.chat_format import end_of_turn, modelfile, ollama_chat
from llmkit.workspace import atomic_dir

SUPPORTED_ARCHITECTURES = ["LlamaForCausalLM"]
QUANTS = ["f32", "f16", "q8_0", "q4_0"]


def check_exportable(model: Model) -> dict[str, Any]:
    if is_adapter(model.path):
        raise UserError(f"{model.ref} is a LoRA adapter; merge it first (llmkit merge {model.name}) and export the merged model")
    check_weights(model.path, "GGUF export")  # a pickle-only or GGUF folder, a cut file: named, not a KeyError
    config = json.loads((model.path / "config.json").read_text())
    archs = config.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise UserError(f"GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)} (Llama-architecture models: llmkit's own, "
                        f"SmolLM2, Llama); {model.ref} is {', '.join(archs) or config.get('model_type')}: use --format onnx, "
                        "or llama.cpp's convert_hf_to_gguf.py")
    rope_type = (config.get("rope_parameters") or {}).get("rope_type", "default")
    scaled = config.get("rope_scaling") or rope_type != "default"
    if scaled or config.get("attention_bias") or config.get("mlp_bias"):
        found = [k for k in ("attention_bias", "mlp_bias") if config.get(k)] + ([f"rope scaling ({rope_type})"] if scaled else [])
        raise UserError(f"GGUF export supports plain Llama (no rope scaling, no biases); {model.ref} has {', '.join(found)}")
    _check_tokenizer(model)
    return config


def _byte_level(part: dict | None) -> bool:
    if not part:
        return False
    return part.get("type") == "ByteLevel" or any(_byte_level(p) for p in part.get("pretokenizers", []))


def _check_tokenizer(model: Model) -> None:
    """Before anything is written: a tokenizer the writer can express as llama.cpp's `gpt2` model. A
    SentencePiece-style BPE (Llama 2, Mistral: `▁` for spaces, byte fallback) written that way would load and
    tokenize every prompt wrongly."""
    file = model.path / "tokenizer.json"
    if not file.exists():
        raise UserError(f"GGUF export needs the model's tokenizer.json; {model.path} has none")
    spec = json.loads(file.read_text(encoding="utf-8"))
    kind = spec.get("model", {}).get("type")
    if kind == "BPE" and (spec["model"].get("byte_fallback") or not _byte_level(spec.get("pre_tokenizer"))):
        raise UserError(f"GGUF export writes byte-level BPE (GPT-2 style: llmkit's, SmolLM2's) and character-level tokenizers; "
                        f"{model.ref}'s is SentencePiece-style BPE (byte fallback or no ByteLevel pre-tokenizer): use "
                        "llama.cpp's convert_hf_to_gguf.py")
    if kind not in ("BPE", "WordLevel"):
        raise UserError(f"GGUF export supports byte-level BPE and character-level tokenizers; {model.ref}'s is {kind}")


def _rope_theta(config: dict) -> float:
    # transformers 5 keeps it in rope_parameters; older configs at the top level.
    return float((config.get("rope_parameters") or {}).get("rope_theta") or config.get("rope_theta") or 10000.0)


def _permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of each head from (half, pair) order to interleaved pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(config: dict, weights: dict[str, torch.Tensor]) -> list[tuple[str, np.ndarray]]:
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]

    def get(name: str) -> np.ndarray:
        return weights[name].float().numpy()

    out = [("token_embd.weight", get("model.embed_tokens.weight"))]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (f"blk.{i}.attn_norm.weight", get(p + "input_layernorm.weight")),
            (f"blk.{i}.attn_q.weight", _permute_rope(get(p + "self_attn.q_proj.weight"), n_head)),
            (f"blk.{i}.attn_k.weight", _permute_rope(get(p + "self_attn.k_proj.weight"), n_kv)),
            (f"blk.{i}.attn_v.weight", get(p + "self_attn.v_proj.weight")),
            (f"blk.{i}.attn_output.weight", get(p + "self_attn.o_proj.weight")),
            (f"blk.{i}.ffn_norm.weight", get(p + "post_attention_layernorm.weight")),
            (f"blk.{i}.ffn_gate.weight", get(p + "mlp.gate_proj.weight")),
            (f"blk.{i}.ffn_up.weight", get(p + "mlp.up_proj.weight")),
            (f"blk.{i}.ffn_down.weight", get(p + "mlp.down_proj.weight")),
        ]
    out.append(("output_norm.weight", get("model.norm.weight")))
    if not config.get("tie_word_embeddings", False) and "lm_head.weight" in weights:
        out.append(("output.weight", get("lm_head.weight")))  # tied models reuse token_embd in llama.cpp
    return out


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (what byte-level BPE vocabularies are written in)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _add_tokenizer(writer, model_dir: Path, config: dict) -> None:
    import gguf

    spec = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    kind = spec["model"]["type"]
    vocab: dict[str, int] = dict(spec["model"]["vocab"])
    special = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
    for text, i in special.items():
        vocab.setdefault(text, i)
    size = config["vocab_size"]
    tokens = [f"[PAD{i}]" for i in range(size)]  # ids the tokenizer never produces (embedding rows beyond it)
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        if i < size:
            tokens[i] = text
            types[i] = gguf.TokenType.CONTROL if text in special else gguf.TokenType.NORMAL
    unk = spec["model"].get("unk_token")
    if kind == "BPE":
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
    elif kind == "WordLevel":
        if any(len(t) != 1 for t in vocab if t not in special):
            raise UserError("GGUF export handles character-level WordLevel vocabularies only (one character per token)")
        # As byte-level BPE: each character is its UTF-8 bytes in GPT-2's byte alphabet, and merges join
        # the bytes of multi-byte characters, so llama.cpp's gpt2 tokenizer yields one token per character.
        table = _byte_alphabet()
        merges = []
        for i, text in enumerate(tokens):
            if types[i] == gguf.TokenType.NORMAL:
                pieces = [table[b] for b in text.encode("utf-8")]
                tokens[i] = "".join(pieces)
                for k in range(1, len(pieces)):
                    merges.append(f"{''.join(pieces[:k])} {pieces[k]}")
        if not merges:  # llama.cpp requires merges; bytes 0x00 0x01 side by side do not occur in text
            merges.append(f"{table[0]} {table[1]}")
        if unk in vocab:
            writer.add_unk_token_id(vocab[unk])
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
    else:
        raise UserError(f"GGUF export supports byte-level BPE and character-level tokenizers; this one is {kind}")
    for key, adder in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                       ("pad_token_id", writer.add_pad_token_id)):
        if isinstance(config.get(key), int):
            adder(config[key])
    writer.add_add_bos_token(False)  # llmkit puts bos in the prompt itself
    writer.add_add_eos_token(False)
    template = chat_template_of(model_dir)
    if template:
        writer.add_chat_template(template)
        # The token that ends an assistant turn: llama.cpp stops there (end of generation) even when the
        # config's EOS is another token (llmkit's template ends turns with <|end|>, EOS is <|endoftext|>).
        eot = end_of_turn(_tokenizer(model_dir))
        if eot in vocab:
            writer.add_eot_token_id(vocab[eot])


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)


def write_gguf(model_dir: Path, target: Path, quant: str, name: str) -> dict[str, Any]:
    import gguf
    from safetensors.torch import load_file

    if quant not in QUANTS:
        raise UserError(f"export quant '{quant}' is not one of {', '.join(QUANTS)}")
    config = json.loads((model_dir / "config.json").read_text())
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(str(file)))
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant]
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(quant)

    writer = gguf.GGUFWriter(str(target), "llama")
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, model_dir, config)
    kinds: dict[str, int] = {}
    for tensor_name, data in _tensors(config, weights):
        if data.ndim == 1 or quant == "f32":
            writer.add_tensor(tensor_name, data.astype(np.float32))
            kind = "f32"
        elif qtype is not None and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
            writer.add_tensor(tensor_name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)
            kind = quant
        else:  # f16, or rows that do not split into quant blocks
            writer.add_tensor(tensor_name, data.astype(np.float16))
            kind = "f16"
        kinds[kind] = kinds.get(kind, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensor_types": kinds, "tensors": sum(kinds.values())}


def export_gguf_folder(model: Model, target: Path, quant: str, lineage: dict[str, Any]) -> dict[str, Any]:
    """A folder holding model-<quant>.gguf, the Modelfile, and the source's config and tokenizer files."""
    config = check_exportable(model)
    gguf_name = f"model-{quant}.gguf"
    with atomic_dir(target) as tmp:
        info = write_gguf(model.path, tmp / gguf_name, quant, model.name)
        chat = ollama_chat(chat_template_of(model.path), _tokenizer(model.path))
        (tmp / "Modelfile").write_text(modelfile(gguf_name, config["max_position_embeddings"], chat))
        for file in model.path.iterdir():  # config and tokenizer: what loaders and evaluators read
            if file.is_file() and file.suffix in (".json", ".jinja", ".txt") and file.name != "llmkit.json":
                shutil.copy2(file, tmp / file.name)
        (tmp / "llmkit.json").write_text(json.dumps({**lineage, "format": "gguf", "gguf": gguf_name, "quant": quant, **info},
                                                    indent=2, default=str))
    return {"gguf": str(target / gguf_name), "chat_format": chat.family, **info}
