"""What kind of model a folder holds, in one vocabulary used by every stage.

- "causal": a language model that generates text (llmkit's own, a Hugging Face *ForCausalLM, a GGUF export);
- "classifier": a sequence classifier (llmkit's `train classify`, a *ForSequenceClassification);
- "encoder": anything else with hidden states to pool (a sentence encoder such as MiniLM).

Read from the model's lineage first (what llmkit trained it as), then from its config's architectures
(for an adapter, its base's), then from an export's own file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from llmkit.models.files import check_json_file
from llmkit.models.io import Model, adapter_base, is_adapter

ModelKind = Literal["causal", "classifier", "encoder"]

# The `task` llmkit writes into a model's lineage, by kind (and back).
TASK_OF_KIND = {"causal": "causal-lm", "classifier": "classification"}
KIND_OF_TASK = {task: kind for kind, task in TASK_OF_KIND.items()}


def _architectures(model: Model) -> list[str] | None:
    """The config's architectures ([] when it names none); None when there is no config.json to read."""
    base = adapter_base(model) if is_adapter(model.path) else model
    config_file = Path(base.path) / "config.json"
    if not config_file.is_file():
        return None
    return check_json_file(config_file, "model config").get("architectures") or []


def model_kind(model: Model) -> ModelKind:
    task = (model.lineage or {}).get("task")
    if task in KIND_OF_TASK:
        return KIND_OF_TASK[task]
    found = _architectures(model)
    archs = found or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classifier"
    info_file = model.path / "llmkit.json"
    gguf = info_file.exists() and json.loads(info_file.read_text()).get("gguf")
    # Most causal LM classes end in ForCausalLM; the older ones (GPT-2, OpenAI GPT, CTRL) in LMHeadModel.
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs) or gguf:
        return "causal"
    if found is None:  # nothing says what it is: "encoder" was a guess, and sent users after a head it had
        from llmkit.errors import UserError

        raise UserError(f"{model.ref}: no config.json in {model.path} to tell what kind of model it is; name a "
                        "Hugging Face model folder, a registered model or a Hub id")
    return "encoder"


def exported_from(model: Model) -> str:
    """What to export again when `model` is itself an export: the model it came from (an ONNX or GGUF file cannot be
    exported to the other format, so advice naming the export sent the user to a second error); else the model."""
    lineage = model.lineage or {}
    parent = (lineage.get("parent_model") or {}).get("ref")
    return parent if parent and lineage.get("format") in ("gguf", "onnx") else model.ref


def require_causal(model: Model, verb: str) -> None:
    """One line before anything is loaded when `model` is not a causal LM. Loaded as one anyway, an encoder or a
    classifier gets a language-model head of random weights (transformers' BertLMHeadModel for minilm-l6): DPO
    trained and registered one, quantize swapped a classifier's trained head for one, generate crashed on it."""
    kind = model_kind(model)
    if kind == "causal":
        return
    from llmkit.errors import UserError

    what = "a classifier" if kind == "classifier" else "an encoder without a language-model head"
    if verb not in ("quantize", "prune"):
        onnx = " (smollm2-135m is one built in)"
    elif kind == "classifier":
        onnx = (f" (a classifier gets smaller and faster as an ONNX export, which onnxruntime runs: llmkit export "
                f"{model.ref} --format onnx)")
    else:  # an encoder alone exports to nothing (export refuses it): it becomes a classifier first
        onnx = (f" (fine-tune it into a classifier first, llmkit train classify --base {model.ref} --data NAME, and "
                "export that with --format onnx)")
    raise UserError(f"{model.ref} is {what}; {verb} takes causal language models{onnx}")
