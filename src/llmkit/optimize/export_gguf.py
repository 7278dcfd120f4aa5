"""`llmkit export --format gguf`: Llama-family models (llmkit's own, SmolLM, Llama, Mistral, Qwen2/2.5, Qwen3) as
GGUF files that llama.cpp and Ollama run.

Written with the `gguf` package's writer: llama.cpp's hyper-parameters, the weights under llama.cpp's tensor
names (f32, f16, q8_0 or q4_0; per architecture in `gguf_arch`), and the tokenizer — byte-level BPE as
llama.cpp's `gpt2` model with its merges and the pre-tokenizer its split regex names (GPT-2's, Qwen2's,
Llama 3's), and character-level vocabularies as the same model with one token per character (their bytes
joined by merges). Beside it, an Ollama `Modelfile`. The chat template travels in the GGUF
(`tokenizer.chat_template`), with the token that ends an assistant turn as `tokenizer.ggml.eot_token_id`, and
in the Modelfile translated to Go (`optimize.chat_format`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmkit.data.tokenizer import byte_alphabet
from llmkit.errors import UserError
from llmkit.models.files import check_weights
from llmkit.models.io import Model, is_adapter
from llmkit.models.pretrained import chat_template_of
from llmkit.optimize.chat_format import end_of_turn, modelfile, ollama_chat
from llmkit.optimize.gguf_arch import (
    ARCHITECTURES,
    FAMILIES,
    add_hyper_parameters,
    arch_of,
    context_length,
    pre_tokenizer,
    tensors,
    unsupported,
)
from llmkit.optimize.gguf_arch import permute_rope as _permute_rope  # noqa: F401 (tests import it from here)
from llmkit.workspace import atomic_dir

SUPPORTED_ARCHITECTURES = list(ARCHITECTURES)
QUANTS = ["f32", "f16", "q8_0", "q4_0"]


def check_exportable(model: Model) -> dict[str, Any]:
    if is_adapter(model.path):
        raise UserError(f"{model.ref} is a LoRA adapter; merge it first (llmkit merge {model.name}) and export the merged model")
    check_weights(model.path, "GGUF export")  # a pickle-only or GGUF folder, a cut file: named, not a KeyError
    config = json.loads((model.path / "config.json").read_text())
    archs = config.get("architectures") or []
    arch = arch_of(config)
    if arch is None:
        raise UserError(f"GGUF export supports {', '.join(SUPPORTED_ARCHITECTURES)} ({FAMILIES}); {model.ref} is "
                        f"{', '.join(archs) or config.get('model_type')}: use --format onnx, or llama.cpp's convert_hf_to_gguf.py")
    found = unsupported(config, arch)
    if found:
        raise UserError(f"GGUF export of {arch.name}-architecture models cannot write {'; '.join(found)} ({model.ref}'s "
                        "config.json): use llama.cpp's convert_hf_to_gguf.py")
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
    if kind == "BPE" and pre_tokenizer(spec) is None:
        raise UserError(f"GGUF export knows llama.cpp's pre-tokenizers for GPT-2's, Qwen2's and Llama 3's splitting; "
                        f"{model.path / 'tokenizer.json'}'s pre_tokenizer is another: use llama.cpp's convert_hf_to_gguf.py")


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
        writer.add_tokenizer_pre(pre_tokenizer(spec) or "gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
    elif kind == "WordLevel":
        if any(len(t) != 1 for t in vocab if t not in special):
            raise UserError("GGUF export handles character-level WordLevel vocabularies only (one character per token)")
        # As byte-level BPE: each character is its UTF-8 bytes in GPT-2's byte alphabet, and merges join
        # the bytes of multi-byte characters, so llama.cpp's gpt2 tokenizer yields one token per character.
        table = byte_alphabet()
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
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quant]
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(quant)

    arch = arch_of(config)
    writer = gguf.GGUFWriter(str(target), arch.name)
    writer.add_name(name)
    add_hyper_parameters(writer, config, arch)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, model_dir, config)
    kinds: dict[str, int] = {}
    # The output head (the embedding, when tied) decides every token: llama.cpp's q4_0 keeps it at 6 bits (q6_K);
    # here it stays q8_0, the nearest type gguf-py writes (all at q4_0: +33 % perplexity on a small model, +17 % so)
    head = "token_embd.weight" if config.get("tie_word_embeddings", False) else "output.weight"
    for tensor_name, data in tensors(config, weights, arch):
        this = gguf.GGMLQuantizationType.Q8_0 if quant == "q4_0" and tensor_name == head else qtype
        if data.ndim == 1 or quant == "f32":
            writer.add_tensor(tensor_name, data.astype(np.float32))
            kind = "f32"
        elif this is not None and data.shape[-1] % gguf.GGML_QUANT_SIZES[this][0] == 0:
            writer.add_tensor(tensor_name, gguf.quants.quantize(data.astype(np.float32), this), raw_dtype=this)
            kind = this.name.lower()
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
        generation = model.path / "generation_config.json"
        sampling = json.loads(generation.read_text()) if generation.exists() else None
        (tmp / "Modelfile").write_text(modelfile(gguf_name, context_length(config), chat, sampling))
        for file in model.path.iterdir():  # config and tokenizer: what loaders and evaluators read
            if file.is_file() and file.suffix in (".json", ".jinja", ".txt") and file.name != "llmkit.json":
                shutil.copy2(file, tmp / file.name)
        (tmp / "llmkit.json").write_text(json.dumps({**lineage, "format": "gguf", "gguf": gguf_name, "quant": quant, **info},
                                                    indent=2, default=str))
    return {"gguf": str(target / gguf_name), "chat_format": chat.family, "context_length": context_length(config),
            "trained_context": config["max_position_embeddings"], **info}
