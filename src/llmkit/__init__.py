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


def submodules(package: str):
    """A package's module `__getattr__` that imports a submodule when it is first named, so README paths such as
    `llmkit.train.grpo.grpo` or `llmkit.serve.app.create_app` work after a plain `import llmkit`."""

    def __getattr__(name: str):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{package}.{name}":  # the submodule exists and failed to import something of its own
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__


def __dir__() -> list[str]:
    return sorted({*globals(), *_STAGES})
