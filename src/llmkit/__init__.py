"""llmkit: raw text to a trained, evaluated, served language model.

Each stage is a subpackage with one public function (`llmkit.data.prepare`, `llmkit.train.pretrain`,
`llmkit.eval.evaluate`, ...); `import llmkit` alone stays light, and `llmkit.<stage>` imports a stage when it is
first used, so the README's `llmkit.data.prepare(DataConfig(...))` works after a plain `import llmkit`.
"""

import importlib

__version__ = "0.1.0"

_STAGES = ("audit", "config", "data", "demo", "errors", "eval", "explain", "generate", "models", "optimize", "predict",
           "registry", "runtime", "serve", "train", "tune", "workspace")


def __getattr__(name: str):
    if name in _STAGES:
        return importlib.import_module(f"llmkit.{name}")
    raise AttributeError(f"module 'llmkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_STAGES})
