"""What runs a model: backends and decoders, below eval, optimize and serve.

- `backends`: the `Backend` interface (prefill / step on token ids), the registry of backends and the
  one rule that picks a backend for a model; the torch, llama.cpp and ONNX backends.
- `decoder`, `fast_llama`: llmkit's torch decode loop over a per-sequence KV cache.
- `batch`: decoders that step a running batch of sequences, with their KV slot pools (the serving
  engine's workers drive these).
- `sampling`, `detokenize`: choosing tokens and turning them into text pieces.

Exporters (`llmkit.optimize`) only write files; what eval and serve run is loaded from here.
"""

from llmkit import submodules

# `llmkit.runtime.backends.register_backend` after a plain `import llmkit`: a submodule is imported when first named
__getattr__ = submodules(__name__)
