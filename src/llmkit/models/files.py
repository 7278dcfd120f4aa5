"""Checks on model files before any library reads them: what llmkit accepts, and one line when it does not.

llmkit reads weights from .safetensors only (a JSON header and raw tensors: nothing in it runs) and GGUF
on the llama.cpp backend. Pickle files (.bin, .pt, .pth, .ckpt, .pkl) are never handed to an unpickler,
not even torch's restricted one. A truncated or malformed file is named with what is wrong, instead of
surfacing as a library's exception: each check raises UserError (CLI exit 2, HTTP 400).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from llmkit.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ACCEPTS = "llmkit loads weights from .safetensors only (convert with safetensors.torch.save_file)"
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit for the JSON header


def check_safetensors_file(path: Path) -> dict[str, Any]:
    """The header of a .safetensors file, after proving the file is whole: every tensor's bytes lie inside it."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UserError(f"{path}: not a safetensors file ({size} bytes; it starts with an 8-byte header length); "
                            f"the file is truncated or not safetensors. {ACCEPTS}")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise UserError(f"{path}: truncated or not safetensors (its header claims {n:,} bytes, the file has {size:,}); "
                            "copy or save it again")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError):
            raise UserError(f"{path}: its safetensors header is not JSON; the file is damaged, save it again") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: its safetensors header is not a JSON object; the file is damaged, save it again")
    end = max((t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)),
              default=0)
    if 8 + n + end > size:
        raise UserError(f"{path}: truncated ({size:,} bytes, its tensors need {8 + n + end:,}); copy or save it again")
    return header


def check_gguf_file(path: Path) -> None:
    """A GGUF file llama.cpp can open: the magic, and every tensor's data inside the file."""
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise UserError(f"{path}: not a GGUF file (it does not start with 'GGUF'); export one with: llmkit export MODEL --format gguf")
    try:
        import gguf

        gguf.GGUFReader(str(path))
    except ImportError:
        return  # the reader ships with llmkit's export extra; llama.cpp checks the file itself
    except Exception as err:  # the reader fails on a cut file with numpy's reshape/view errors
        raise UserError(f"{path}: truncated or damaged GGUF ({str(err).splitlines()[0][:120]}); export it again") from None


def check_json_file(path: Path, what: str) -> dict[str, Any]:
    """A JSON object file (config.json, tokenizer.json, adapter_config.json ...), named when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: the {what} is not UTF-8 text; it should be a JSON file") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: the {what} is not valid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the {what} should be a JSON object, not {type(data).__name__}")
    return data


def check_weights(folder: Path, needs: str = "this command") -> None:
    """The folder holds .safetensors weights, each whole; otherwise one line saying what it holds instead."""
    folder = Path(folder)
    if not folder.is_dir():
        return  # a Hub id: transformers resolves it, with use_safetensors=True
    for name in ("config.json", "generation_config.json", "tokenizer_config.json", "tokenizer.json"):
        if (folder / name).exists():
            check_json_file(folder / name, name)
    tensors = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = set(check_json_file(index, "safetensors index").get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (folder / s).exists())
        if missing:
            raise UserError(f"{index}: names {', '.join(missing[:3])}, which {'is' if len(missing) == 1 else 'are'} missing; copy the whole folder")
    if tensors:
        for file in tensors:
            check_safetensors_file(file)
        return
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs:
        raise UserError(f"{folder} is a GGUF export ({ggufs[0].name}); {needs} needs a Hugging Face folder with .safetensors "
                        "weights: use the model it was exported from, or serve the GGUF (llmkit serve NAME runs it on llama.cpp)")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"{folder} has pickle weights only ({', '.join(pickles[:3])}), which llmkit never unpickles; "
                        f"{ACCEPTS}")
    raise UserError(f"{folder} has no weights (no .safetensors file); {ACCEPTS}")


def check_adapter(folder: Path) -> None:
    """A LoRA adapter folder in PEFT's safetensors form: adapter_config.json and adapter_model.safetensors."""
    folder = Path(folder)
    check_json_file(folder / "adapter_config.json", "adapter config")
    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        pickles = sorted(p.name for p in folder.iterdir() if p.name.startswith("adapter_model") and p.suffix in PICKLE_SUFFIXES)
        found = f"it has {', '.join(pickles)}, a pickle, which llmkit never unpickles" if pickles else "it has none"
        raise UserError(f"{folder}: a LoRA adapter needs adapter_model.safetensors; {found}. "
                        "Save the adapter with safe_serialization=True")
    check_safetensors_file(weights)
    for name in ("tokenizer_config.json", "tokenizer.json"):
        if (folder / name).exists():
            check_json_file(folder / name, name)
