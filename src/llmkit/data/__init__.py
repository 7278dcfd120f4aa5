"""Data stage: ingest, clean, dedupe, redact PII, tokenize, version. Python: llmkit.data.prepare(cfg)."""


def __getattr__(name):
    # Lazy so that importing one data module (e.g. pii) does not pull in the whole pipeline.
    if name in ("prepare", "DatasetVersion"):
        from llmkit.data import pipeline as _pipeline

        return getattr(_pipeline, name)
    raise AttributeError(name)
