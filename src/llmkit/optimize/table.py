"""The before/after table of every compression: size on disk, perplexity (accuracy for classifiers)
on the source model's val split, decode tokens/s. Each figure is a registered evaluation."""

from __future__ import annotations

from llmkit.config import BenchModelConfig, EvalConfig
from llmkit.models.io import Model
from llmkit.registry import Registry
from llmkit.workspace import Workspace


def before_after(before: Model, after: Model, ws: Workspace, registry: Registry, max_examples: int = 200,
                 console=None, progress=None) -> list[dict]:
    from llmkit.eval.evaluation import bench_model, evaluate, model_task
    from llmkit.eval.speed import disk_size_bytes

    dataset = ((before.lineage or {}).get("dataset") or {}).get("id")
    rows = []
    for label, model in (("before", before), ("after", after)):
        row = {"model": model.ref, "stage": label, "size_mb": round(disk_size_bytes(model) / 2**20, 3)}
        if dataset:
            kind = model_task(before)
            report = evaluate(model.id or str(model.path), EvalConfig(data=dataset, split="val", max_examples=max_examples),
                              ws, registry, progress)
            key = "accuracy" if kind == "classification" else "perplexity"
            row[key] = report.metrics.get(key)
        if model_task(before) != "classification":
            # 32 + 32 tokens, or half the context each for models with less than 64.
            half = min(32, max(1, _context(before) // 2))
            speed = bench_model(model.id or str(model.path), BenchModelConfig(prompt_tokens=half, new_tokens=half, runs=5,
                                                                              warmup=2), ws, registry, progress)
            row["decode_tokens_per_s"] = round(speed.metrics["decode_tokens_per_s"], 1)
        rows.append(row)
    if console is not None:
        from rich.table import Table

        table = Table(title=f"{before.ref} → {after.ref}")
        keys = [k for k in rows[0] if k not in ("stage",)]
        for k in keys:
            table.add_column(k, justify="left" if k == "model" else "right")
        for row in rows:
            table.add_row(*(f"{row.get(k):,.4f}" if isinstance(row.get(k), float) else str(row.get(k, "-")) for k in keys))
        console.print(table)
    return rows


def _context(model: Model) -> int:
    import json

    config = model.path / "config.json"
    return int(json.loads(config.read_text()).get("max_position_embeddings") or 64) if config.exists() else 64
