"""Evaluation: `llmkit.eval.evaluate(model, cfg) -> Report`, `bench_model`, `compare`."""

from llmkit.eval.comparison import compare
from llmkit.eval.evaluation import bench_model, evaluate
from llmkit.eval.report import Report

__all__ = ["evaluate", "bench_model", "compare", "Report"]
