"""The registry name of a model a stage makes (trained, merged, compressed, exported): --name, else one made from its
source's, never a built-in model's name."""

from __future__ import annotations

from llmkit.errors import UserError
from llmkit.models.io import BUILTIN_MODELS
from llmkit.registry import given_or_default


def output_name(stage: str, given: str | None, derived: str) -> str:
    """`given_or_default`, refusing a built-in model's name: registered as `smollm2-135m`, a quantized (or trained)
    model was shown by `show smollm2-135m` while every other command read the name as the built-in. `stage` is the
    config section the name is under (`sft` for `sft.name`)."""
    name = given_or_default(given, derived)
    if name in BUILTIN_MODELS:
        raise UserError(f"{stage}.name = '{name}' is a built-in model's name (every command reads '{name}' as the "
                        "built-in); choose another --name", param=f"{stage}.name")
    return name
