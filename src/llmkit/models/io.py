"""Loading and saving models: Hugging Face folders, safetensors only, lineage in llmkit.json.

A MODEL argument is a registry name (name, name:vN, id) or a local Hugging Face folder; Hub ids
work for users with a network through the same loader. Pickle checkpoints are never loaded and
remote code never runs.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UserError
from llmkit.workspace import atomic_dir


@dataclass
class Model:
    """A model folder and, when it is registered, its registry record."""

    path: Path
    name: str
    id: str | None = None
    version: int | None = None
    lineage: dict[str, Any] | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}" if self.version else self.name


def resolve_model(ref: str, registry=None) -> Model:
    """A registry name/id, or a local folder, or a Hub id (network users only)."""
    if registry is not None:
        rec = registry.find(ref, "model")
        if rec is not None:
            if not rec.path or not Path(rec.path).exists():
                raise UserError(f"model {rec.ref} points at {rec.path}, which is missing; remove it with 'llmkit rm {rec.id}'")
            return Model(Path(rec.path), rec.name, rec.id, rec.version, _read_lineage(Path(rec.path)))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{path} is not a Hugging Face model folder (no config.json)")
        return Model(path.resolve(), path.name, lineage=_read_lineage(path))
    if ref.count("/") == 1 and not path.exists() and not ref.startswith((".", "/")):
        return Model(Path(ref), ref)  # a Hub id: transformers resolves it (and caches it)
    known = ""
    if registry is not None:
        names = sorted({r.name for r in registry.list("model")})
        known = f"; registered models: {', '.join(names[:10])}" if names else "; no models are registered yet"
    raise UserError(f"no model '{ref}': not a registered name or id, nor a model folder{known}")


def _read_lineage(path: Path) -> dict[str, Any] | None:
    file = path / "llmkit.json"
    return json.loads(file.read_text()) if file.exists() else None


def load_causal_lm(model: Model, dtype=None):
    """(model, tokenizer) from a folder, refusing pickle weights and remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(model.path)
    if model.path.is_dir():
        has_safetensors = any(model.path.glob("*.safetensors")) or (model.path / "model.safetensors.index.json").exists()
        if not has_safetensors:
            raise UserError(f"{path} has no .safetensors weights; llmkit does not load pickle (.bin/.pt) weights from outside. "
                            "Convert them with safetensors first.")
    try:
        lm = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                                  **({"dtype": dtype} if dtype is not None else {}))
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a causal language model from {path}: {str(err).splitlines()[0]}") from None
    lm.eval()
    return lm, tok


def save_model(lm, tokenizer, target: Path, lineage: dict[str, Any]) -> Path:
    """Write a Hugging Face folder (safetensors, tokenizer, llmkit.json) atomically.

    `tokenizer` is a tokenizer object, or the folder of a saved one whose files are copied.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress display owns the terminal
    with atomic_dir(target) as tmp:
        lm.save_pretrained(tmp, safe_serialization=True)
        if isinstance(tokenizer, str | Path):
            for file in Path(tokenizer).iterdir():
                if file.is_file():
                    shutil.copy2(file, tmp / file.name)
        else:
            tokenizer.save_pretrained(tmp)
        (tmp / "llmkit.json").write_text(json.dumps(lineage, indent=2, default=str))
    return target


def save_llama_folder(model, fields: dict[str, Any], tokenizer_dir: Path, target: Path, lineage: dict[str, Any]) -> Path:
    """Our training Llama as a Hugging Face LlamaForCausalLM folder, written without building the
    HF module (importing and initialising it costs seconds at the end of every run)."""
    from safetensors.torch import save_file

    from llmkit.models.presets import hf_config_json

    with atomic_dir(target) as tmp:
        save_file(model.hf_state_dict(), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config_json(fields), indent=2))
        generation = {k: fields.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        for file in Path(tokenizer_dir).iterdir():
            if file.is_file():
                shutil.copy2(file, tmp / file.name)
        (tmp / "llmkit.json").write_text(json.dumps(lineage, indent=2, default=str))
    return target


def model_size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
