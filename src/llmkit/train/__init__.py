"""Training: pretrain (later sft, classify, distill). Python: llmkit.train.pretrain(cfg) -> Model."""

from llmkit.train.pretrain import pretrain  # noqa: E402  (binds the function over the submodule name)

__all__ = ["pretrain"]
