"""Models: presets, building from scratch, safe loading, saving with lineage."""


def __getattr__(name: str):
    # `llmkit.models.io.resolve_model(NAME)` after a plain `import llmkit`: a submodule is imported when first named
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
