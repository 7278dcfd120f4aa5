"""An export, a quantization or a pruning made again from the same model with the same settings returns the version made
before, as `import` and `data prepare` do for the same files. The model is registered before the before/after
table is measured, so a re-run after a Ctrl-C in the table (or a second run to see the table again) registered
one identical version more each time.

The key is the recipe, not the bytes: the stage, the source model's registry id and the settings that shape the
weights (not the name, the table or its data). Both writers are deterministic in these.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llmkit.models.io import Model, resolve_model
from llmkit.registry import Record, Registry

# Settings that change what is measured or what it is called, not what is written.
NOT_THE_WEIGHTS = {"name", "table", "eval_max_examples", "eval_data"}


def recipe_key(stage: str, source: Model, cfg, **inputs) -> str | None:
    """The content hash a made model is registered with; None for a source outside the registry (a folder, a Hub
    id): nothing identifies its weights, and its files may change. `inputs`: what else shapes the weights and is not
    a setting as given (the registry id of the dataset a name resolved to, a default the stage chose)."""
    if not source.id:
        return None
    settings = {k: v for k, v in cfg.model_dump().items() if k not in NOT_THE_WEIGHTS}
    text = json.dumps([stage, source.id, settings] + ([inputs] if inputs else []), sort_keys=True, default=str)
    return "recipe:" + hashlib.sha256(text.encode()).hexdigest()


def made_before(registry: Registry, name: str, key: str | None) -> Record | None:
    """The version of `name` made from the same recipe, when its folder is still here."""
    if key is None:
        return None
    rec = registry.find_by_hash("model", key, name)
    return rec if rec is not None and rec.path and Path(rec.path).is_dir() else None


def made_before_model(registry: Registry, name: str, key: str | None, source: Model, what: str, console=None) -> Model | None:
    """The model `made_before` finds, resolved, saying so on `console` (`what`: "export", "quantization", ...)."""
    before = made_before(registry, name, key)
    if before is None:
        return None
    if console is not None:
        console.print(f"{before.ref} is this {what} of {source.ref} already (the same settings): kept, not made again",
                      markup=False, highlight=False)
    return resolve_model(before.id, registry)
