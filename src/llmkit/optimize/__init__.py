"""Compression and export: quantize, prune, export ONNX / GGUF."""


def __getattr__(name: str):
    # `llmkit.optimize.quantize.quantize` as the README writes it, after a plain `import llmkit`
    import importlib

    if name in ("quantize", "prune", "export"):
        return importlib.import_module(f"llmkit.optimize.{name}")
    raise AttributeError(f"module 'llmkit.optimize' has no attribute {name!r}")
