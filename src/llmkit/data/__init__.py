"""Data stage: ingest, clean, dedupe, redact PII, tokenize, version. Python: llmkit.data.prepare(cfg)."""

from llmkit import submodules


def __getattr__(name):
    # Lazy so that importing one data module (e.g. pii) does not pull in the whole pipeline.
    if name == "prepare":
        from llmkit.data.pipeline import prepare

        return prepare
    if name == "DatasetVersion":
        from llmkit.data.dataset import DatasetVersion

        return DatasetVersion
    return _submodule(name)  # a submodule (`llmkit.data.feedback.dataset_from_feedback`) when first named


_submodule = submodules(__name__)
