"""The before/after table of every compression: size on disk, perplexity (accuracy for classifiers)
on the source model's val split, decode tokens/s. Each figure is a registered evaluation.

Each model runs where it will be used: a GGUF export on llama.cpp (its perplexity from llama.cpp's
logits, its speed from llama.cpp's decoding), anything else on torch. Perplexity windows are at most
`TABLE_CONTEXT` tokens, a few at a time: the comparison only needs the same windows on both sides, and a GGUF's
logits come whole from llama.cpp (a 49k-token vocabulary over a full 8k context is 1.6 GB per window).
"""

from __future__ import annotations

from llmkit.config import BenchModelConfig, EvalConfig
from llmkit.eval.report import format_number
from llmkit.models.io import Model
from llmkit.registry import Registry
from llmkit.workspace import Workspace

TABLE_CONTEXT = 1024


def before_after(before: Model, after: Model, ws: Workspace, registry: Registry, max_examples: int = 200,
                 console=None, progress=None, eval_data: str | None = None) -> list[dict]:
    """The rows, and the table on `console`. Quality is measured on `eval_data`'s val split, else on the data the
    model was trained on; with neither the table has sizes and speeds only, and says so."""
    from llmkit.eval.evaluation import bench_model, evaluate, model_task
    from llmkit.eval.speed import disk_size_bytes

    dataset = registry.get(eval_data, "dataset").id if eval_data else ((before.lineage or {}).get("dataset") or {}).get("id")
    kind = model_task(before)
    key = "accuracy" if kind == "classification" else "perplexity"
    # Only the figure the table shows: on a chat split an unrestricted evaluation would also generate
    # an answer to every conversation, twice, for metrics the table does not print.
    windows = {} if kind == "classification" else {"context": min(_context(before), TABLE_CONTEXT), "batch_size": 2}
    quality = EvalConfig(data=dataset, split="val", max_examples=max_examples, metrics=[key], **windows)
    rows = []
    for label, model in (("before", before), ("after", after)):
        row = {"model": model.ref, "stage": label, "size_mb": round(disk_size_bytes(model) / 2**20, 3)}
        if dataset:
            report = evaluate(model.id or str(model.path), quality, ws, registry, progress)
            row[key] = report.metrics[key]
        if kind != "classification":
            # 32 + 32 tokens, or half the context each for models with less than 64.
            half = min(32, max(1, _context(before) // 2))
            speed = bench_model(model.id or str(model.path), BenchModelConfig(prompt_tokens=half, new_tokens=half, runs=5,
                                                                              warmup=2), ws, registry, progress)
            row["decode_tokens_per_s"] = round(speed.metrics["decode_tokens_per_s"], 1)
            row["others_cpu_share"] = speed.metrics.get("others_cpu_share")
        rows.append(row)
    if console is not None:
        from rich.table import Table
        from rich.text import Text

        # which records the quality figure comes from: `llmkit eval` defaults to another split, so its figure differs
        on = f" ({key} on the val split, at most {max_examples} records)" if dataset else ""
        table = Table(title=Text(f"{before.ref} → {after.ref}{on}"))
        keys = [k for k in rows[0] if k not in ("stage", "others_cpu_share")]
        for k in keys:  # the JSON keeps the key size_mb; its values are MiB (2**20 bytes), as the header says
            table.add_column("size (MiB)" if k == "size_mb" else k, justify="left" if k == "model" else "right")
        for row in rows:
            table.add_row(*(format_number(row.get(k), k) for k in keys))
        console.print(table)
        from llmkit.eval.speed import busy_warning

        busiest = max((r["others_cpu_share"] for r in rows if r.get("others_cpu_share") is not None), default=None)
        if warning := busy_warning(busiest, "the decode timings"):  # one timing each: a busy machine skews the ratio
            console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)
        if not dataset:  # the quality column went missing without a word for built-in and imported models
            console.print(f"no {key} column: {before.ref} was not trained on a dataset registered here; pass "
                          "--eval-data NAME to measure it on one", markup=False, highlight=False)
    return rows


def table_if_asked(source: Model, made: Model, cfg, ws: Workspace, registry: Registry, console=None,
                   progress=None) -> list[dict] | None:
    """The before/after rows of a compression command whose config asks for them (`cfg.table`), else None."""
    if not cfg.table:
        return None
    return before_after(source, made, ws, registry, cfg.eval_max_examples, console, progress, eval_data=cfg.eval_data)


def check_eval_data(source: Model, eval_data: str | None, registry: Registry, stage: str = "quantize") -> None:
    """Before anything is written: --eval-data names a dataset the model's quality can be measured on. Errors name
    the key path (`quantize.eval_data`), as every other bad value's do."""
    if not eval_data:
        return
    from llmkit.errors import UserError
    from llmkit.eval.evaluation import model_task

    where = f"{stage}.eval_data = '{eval_data}' (--eval-data)"
    try:
        dataset = registry.get(eval_data, "dataset")
    except UserError as err:
        raise UserError(f"{where}: {err}", param=f"{stage}.eval_data") from None
    classifier = model_task(source) == "classification"
    fits = dataset.kind == "classify" if classifier else dataset.kind in ("lm", "chat")
    if not fits:
        raise UserError(f"{where} is a '{dataset.kind}' dataset; {source.ref} is measured on "
                        + ("a classify dataset" if classifier else "an lm or chat dataset"), param=f"{stage}.eval_data")


def _context(model: Model) -> int:
    import json

    config = model.path / "config.json"
    return int(json.loads(config.read_text()).get("max_position_embeddings") or 64) if config.exists() else 64
