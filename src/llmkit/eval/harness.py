"""EleutherAI's lm-eval harness on an llmkit model folder, when the `lm-eval` package is installed.

The model folder is a plain Hugging Face folder, so lm-eval's `hf` model type loads it; tasks come
from lm-eval's registry or from local YAML files (`--harness-include DIR`), which is how it runs
offline: point a task's `dataset_path` at local files (e.g. `dataset_path: json` with
`dataset_kwargs: {data_files: ...}`).
"""

from __future__ import annotations

from typing import Any

from llmkit.config import EvalConfig
from llmkit.errors import UserError
from llmkit.eval.report import Report
from llmkit.models.io import Model, is_adapter


def run_harness(model: Model, cfg: EvalConfig) -> Report:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError("eval.harness needs EleutherAI's lm-eval package: pip install lm-eval "
                        "(then: llmkit eval MODEL --harness TASK[,TASK] [--harness-include DIR])") from None
    if is_adapter(model.path):
        raise UserError(f"{model.ref} is a LoRA adapter; merge it first (llmkit merge {model.name}) and evaluate the merged model")
    tasks = [t.strip() for t in (cfg.harness or "").split(",") if t.strip()]
    manager = TaskManager(include_path=cfg.harness_include) if cfg.harness_include else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(f"eval.harness: unknown lm-eval task(s) {', '.join(unknown)}; see lm-eval --tasks list"
                        + ("" if cfg.harness_include else " or pass --harness-include DIR with your task YAML files"))
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model.path},trust_remote_code=False",
                                      tasks=tasks, task_manager=manager, batch_size=cfg.batch_size,
                                      limit=cfg.harness_limit or None, device="cpu")
    metrics: dict[str, Any] = {}
    for task, values in (results or {}).get("results", {}).items():
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics[f"{task}/{key.split(',')[0]}"] = value
    return Report(model.ref, "harness", metrics, None, None, cfg.model_dump())
