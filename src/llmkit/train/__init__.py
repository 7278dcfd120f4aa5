"""Training stages, one public function each, returning the registered Model:

    llmkit.train.pretrain(PretrainConfig(...))   llmkit.train.sft(SftConfig(...))
    llmkit.train.classify(ClassifyConfig(...))   llmkit.train.distill(DistillConfig(...))

Each lives in its own module (`pretraining`, `supervised`, `classification`, `distillation`) on the
shared loop of `loop.py`; the modules are named for what they do so the functions never hide them.
"""

from llmkit.train.classification import classify
from llmkit.train.distillation import distill
from llmkit.train.pretraining import pretrain
from llmkit.train.supervised import sft

__all__ = ["pretrain", "sft", "classify", "distill"]


def __getattr__(name: str):
    # `llmkit.train.grpo.grpo(GrpoConfig(...))` after a plain `import llmkit`: a submodule is imported when first named
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
