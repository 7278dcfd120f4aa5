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
        except (UnicodeDecodeError, ValueError, RecursionError):  # (nested thousands deep: a hostile header)
            raise UserError(f"{path}: its safetensors header is not JSON; the file is damaged, save it again") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: its safetensors header is not a JSON object; the file is damaged, save it again")
    end = 0
    for name, tensor in header.items():
        if name != "__metadata__":
            end = max(end, _tensor_end(path, name, tensor))
    if 8 + n + end > size:
        raise UserError(f"{path}: truncated ({size:,} bytes, its tensors need {8 + n + end:,}); copy or save it again")
    return header


# Bytes per element of safetensors' dtypes; a dtype not listed (a newer sub-byte float) is left to the library.
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "C64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1}


def _tensor_end(path: Path, name: str, tensor: Any) -> int:
    """Where tensor `name`'s bytes end in the data, once its entry is proved well formed: a dtype, a shape of
    non-negative ints and two offsets whose span holds exactly that shape (a header claiming a giant tensor over
    four bytes, or offsets that are not numbers, is a damaged or hostile file, said in one line)."""
    def bad(what: str) -> UserError:
        return UserError(f"{path}: tensor {str(name)[:100]!r} has {what} in its safetensors header; the file is damaged "
                         "or not safetensors, save it again")

    if not isinstance(tensor, dict):
        raise bad("an entry that is not a JSON object")
    offsets, shape, dtype = tensor.get("data_offsets"), tensor.get("shape"), tensor.get("dtype")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        raise bad(f"data_offsets {str(offsets)[:60]} (two byte offsets, begin <= end, are expected)")
    if not (isinstance(shape, list) and all(_count(d) for d in shape)):
        raise bad(f"shape {str(shape)[:60]} (a list of sizes is expected)")
    if not isinstance(dtype, str):
        raise bad(f"dtype {str(dtype)[:30]}")
    if dtype in _DTYPE_BYTES:
        elements = 1
        for d in shape:
            elements *= d
        if elements * _DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
            raise bad(f"shape {shape} of {dtype} ({elements * _DTYPE_BYTES[dtype]:,} bytes) over {offsets[1] - offsets[0]:,} "
                      "bytes of data")
    return offsets[1]


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0



def check_gguf_file(path: Path) -> None:
    """A GGUF file llama.cpp can open: the magic, a header that parses, and every tensor's data inside the file."""
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise UserError(f"{path}: not a GGUF file (it does not start with 'GGUF'); export one with: llmkit export MODEL --format gguf")
    try:
        needed = gguf_data_end(path)
    except ImportError:
        return  # the quant sizes ship with llmkit's export extra; llama.cpp checks the file itself
    except (struct.error, ValueError, KeyError, IndexError, OverflowError, TypeError) as err:
        raise UserError(f"{path}: truncated or damaged GGUF (its header does not parse: {err}); download, copy or export it again") from None
    size = path.stat().st_size
    if needed > size:
        raise UserError(f"{path}: truncated or damaged GGUF ({size:,} bytes, its tensors need {needed:,}); download, copy or export it again")


# GGUF metadata value types -> struct format (8 string and 9 array are read by hand).
_GGUF_MAX_NESTING = 16  # arrays of arrays: real files nest one deep (a vocabulary is an array of strings)
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_data_end(path: Path) -> int:
    """The byte offset where a GGUF file's last tensor ends, from its header alone.

    Walks the header with `struct` rather than gguf's GGUFReader: the reader builds a numpy view per field
    element (9 s for SmolLM2-135M's 49k-token vocabulary on 2 cores, paid on every load of the model by the
    llama.cpp backend); skipping over the values takes milliseconds. Only the quant block sizes come from gguf."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as fh:
        head = fh.read(64 << 20)  # headers of real models are a few MB (the vocabulary); past this, "runs past the end"
    pos = 4

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, head, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> bytes:
        nonlocal pos
        n = take("Q")
        if pos + n > len(head):
            raise ValueError("a string runs past the end of the header")
        pos += n
        return head[pos - n: pos]

    def skip(kind: int, depth: int = 0) -> Any:
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            item, count = take("I"), take("Q")
            if item in _GGUF_SCALARS:
                pos += count * struct.calcsize(_GGUF_SCALARS[item])
            elif item == 9 and depth >= _GGUF_MAX_NESTING:  # arrays of arrays thousands deep: a hostile header
                raise ValueError(f"arrays nested more than {_GGUF_MAX_NESTING} deep")
            else:
                for _ in range(count):
                    skip(item, depth + 1)
            return None
        return take(_GGUF_SCALARS[kind])

    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    if version < 2:
        raise ValueError(f"GGUF version {version} is older than llama.cpp reads")
    alignment = 32
    for _ in range(n_kv):
        key = string()
        value = skip(take("I"))
        if key == b"general.alignment":
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"general.alignment is {value!r}, not a positive number")
            alignment = value
    tensors = []
    for _ in range(n_tensors):
        string()
        dims = [take("Q") for _ in range(take("I"))]
        kind, offset = take("I"), take("Q")
        block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
        elements = 1
        for d in dims:
            elements *= d
        tensors.append(offset + elements // block * block_bytes)
    start = (pos + alignment - 1) // alignment * alignment
    return start + max(tensors, default=0)


# A Hugging Face tokenizer is one of these beside the model (with tokenizer_config.json or not).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


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
                        "weights: use the model it was exported from; serve, eval and bench-model run the GGUF itself on "
                        "llama.cpp (with --backend auto, their default)")
    if (folder / "model.onnx").exists():
        raise UserError(f"{folder} is an ONNX export; {needs} needs a Hugging Face folder with .safetensors weights: use "
                        "the model it was exported from (llmkit eval, bench-model and predict run the export on onnxruntime)")
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
