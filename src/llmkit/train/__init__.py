"""Training stages, one public function each, returning the registered Model:

    llmkit.train.pretrain(PretrainConfig(...))   llmkit.train.sft(SftConfig(...))
    llmkit.train.classify(ClassifyConfig(...))   llmkit.train.distill(DistillConfig(...))
"""

# Each binds the function over its submodule's name (the modules stay importable by full path).
from llmkit.train.classify import classify  # noqa: E402
from llmkit.train.distill import distill  # noqa: E402
from llmkit.train.pretrain import pretrain  # noqa: E402
from llmkit.train.sft import sft  # noqa: E402, I001

__all__ = ["pretrain", "sft", "classify", "distill"]
