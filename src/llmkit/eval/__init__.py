"""Evaluation: `llmkit.eval.evaluate(model, cfg) -> Report`, `bench_model`, `compare`."""

from llmkit.eval.compare import compare
from llmkit.eval.evaluate import bench_model, evaluate
from llmkit.eval.report import Report

__all__ = ["evaluate", "bench_model", "compare", "Report"]
