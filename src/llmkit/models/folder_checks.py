"""What `import` checks of a Hugging Face model folder before anything is written: no remote code (`auto_map`), no
links to files outside it, weights as safetensors that match config.json, an architecture transformers has a
causal-LM class for, config keys transformers knows, and a tokenizer."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from llmkit.errors import UserError
from llmkit.models.files import (
    PICKLE_SUFFIXES,
    TOKENIZER_FILES,
    check_json_file,
    check_safetensors_file,
    check_weights,
)

ACCEPTED = ("a Hugging Face model folder with .safetensors weights, a .gguf file, or an installed Python package "
            "that ships one of those")


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
