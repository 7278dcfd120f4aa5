"""Models: presets, building from scratch, safe loading, saving with lineage."""

from llmkit import submodules

# `llmkit.models.io.resolve_model(NAME)` after a plain `import llmkit`: a submodule is imported when first named
__getattr__ = submodules(__name__)
