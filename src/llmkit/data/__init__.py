"""Data stage: ingest, clean, dedupe, redact PII, tokenize, version. Python: llmkit.data.prepare(cfg)."""


def __getattr__(name):
    # Lazy so that importing one data module (e.g. pii) does not pull in the whole pipeline.
    if name == "prepare":
        from llmkit.data.pipeline import prepare

        return prepare
    if name == "DatasetVersion":
        from llmkit.data.dataset import DatasetVersion

        return DatasetVersion
    raise AttributeError(name)
