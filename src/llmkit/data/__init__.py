"""Data stage: ingest, clean, dedupe, redact PII, tokenize, version. Python: llmkit.data.prepare(cfg)."""


def __getattr__(name):
    # Lazy so that importing one data module (e.g. pii) does not pull in the whole pipeline.
    if name == "prepare":
        from llmkit.data.pipeline import prepare

        return prepare
    if name == "DatasetVersion":
        from llmkit.data.dataset import DatasetVersion

        return DatasetVersion
    import importlib  # a submodule (`llmkit.data.feedback.dataset_from_feedback`) when first named

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
