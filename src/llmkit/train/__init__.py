"""Training stages, one public function each, returning the registered Model:

    llmkit.train.pretrain(PretrainConfig(...))   llmkit.train.sft(SftConfig(...))
    llmkit.train.classify(ClassifyConfig(...))   llmkit.train.distill(DistillConfig(...))

Each lives in its own module (`pretraining`, `supervised`, `classification`, `distillation`) on the
shared loop of `loop.py`; the modules are named for what they do so the functions never hide them.
"""

from llmkit import submodules
from llmkit.train.classification import classify
from llmkit.train.distillation import distill
from llmkit.train.pretraining import pretrain
from llmkit.train.supervised import sft

__all__ = ["pretrain", "sft", "classify", "distill"]


# `llmkit.train.grpo.grpo(GrpoConfig(...))` after a plain `import llmkit`: a submodule is imported when first named
__getattr__ = submodules(__name__)
