"""`llmkit eval`, `llmkit bench-model`, `llmkit compare`: measurements registered with their model.

`evaluate(model, cfg)` picks what fits the model: perplexity and bits per byte for a causal LM on
an lm or chat split (plus exact match / ROUGE-L / BLEU on a chat split or a {prompt, reference}
file), the classifier metrics for a classifier. Every evaluation becomes a report folder
(report.json, report.html, plots) and an `eval` record linked to the model and dataset, which is
what `compare` lines up.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmkit.config import BenchModelConfig, EvalConfig
from llmkit.data.dataset import open_dataset
from llmkit.data.formats import jsonl_objects
from llmkit.errors import UserError
from llmkit.eval.report import Report
from llmkit.models.io import Model, load_tokenizer_for, resolve_model
from llmkit.models.kind import TASK_OF_KIND, model_kind
from llmkit.registry import Registry
from llmkit.workspace import Workspace, atomic_dir

LM_METRICS = ["perplexity", "bits_per_byte"]
GENERATION_METRICS = ["exact_match", "rougeL", "bleu"]
CLASSIFIER_METRICS = ["accuracy", "precision", "recall", "f1", "roc_auc", "ece"]


def model_task(model: Model) -> str:
    """What an evaluation measures the model as: 'causal-lm' or 'classification' (the lineage's `task`)."""
    kind = model_kind(model)
    if kind not in TASK_OF_KIND:
        raise UserError(f"{model.ref} is an {kind} (no language-model or classifier head): there is nothing to "
                        "evaluate; evaluate a causal LM or a classifier")
    return TASK_OF_KIND[kind]


def _check_metrics(requested: list[str], allowed: list[str], kind: str) -> list[str]:
    wrong = [m for m in requested if m not in allowed]
    if wrong:
        raise UserError(f"eval.metrics: {', '.join(wrong)} does not fit a {kind} model with this data; "
                        f"metrics that do: {', '.join(allowed)}")
    return requested or allowed


def _split_records(registry: Registry, ref: str, split: str, max_examples: int):
    ds = open_dataset(registry, ref)
    records = ds.records(split)
    if not records:
        have = {s: n for s, n in ds.split_counts().items() if n}
        raise UserError(f"eval.split = '{split}': dataset {ds.ref} has no records in that split; splits with records: "
                        f"{', '.join(f'{s} ({n})' for s, n in have.items()) or 'none'}")
    return ds, records[: max_examples or None]


def evaluate(model_ref: str, cfg: EvalConfig, ws: Workspace | None = None, registry: Registry | None = None,
             progress=None) -> Report:
    cfg = EvalConfig.given(cfg, "llmkit.eval.evaluate")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    model = resolve_model(model_ref, registry)
    if cfg.harness:
        from llmkit.eval.harness import run_harness

        return _finish(run_harness(model, cfg), model, None, cfg, ws, registry)
    kind = model_task(model)
    if not cfg.data:
        raise UserError("eval.data is not set: pass --data NAME (a dataset) or --data FILE.jsonl ({prompt, reference} lines)")
    if cfg.source == "shards" and cfg.max_examples:  # the whole split's loss was divided by those records' bytes
        raise UserError(f"eval.max_examples = {cfg.max_examples} limits records, and --source shards scores the "
                        "dataset's token shards whole; drop --max-examples or use --source text", param="eval.max_examples")
    data_file = Path(cfg.data)
    if data_file.suffix not in ("", ".jsonl") and data_file.is_file() and registry.find(cfg.data, "dataset") is None:
        raise UserError(f"eval.data = '{cfg.data}': eval reads a registered dataset or a .jsonl file of {{prompt, reference}} "
                        f"lines; register this file first (llmkit data prepare {cfg.data} --name NAME) and pass --data NAME",
                        param="eval.data")
    if data_file.suffix == ".jsonl" and not data_file.is_file() and registry.find(cfg.data, "dataset") is None:
        what = "a folder, not a file" if data_file.is_dir() else "no such file"
        raise UserError(f"eval.data = '{cfg.data}': {what}; give a {{prompt, reference}} .jsonl file that exists, "
                        "or a dataset's name (llmkit ls datasets)", param="eval.data")
    if data_file.suffix == ".jsonl":
        if kind != "causal-lm":
            raise UserError(f"{cfg.data}: a {{prompt, reference}} file evaluates generation; {model.ref} is a {kind} model")
        _check_metrics(cfg.metrics, GENERATION_METRICS, kind)
        report = _generation_file(model, data_file, cfg, progress)
        return _finish(report, model, None, cfg, ws, registry)
    ds, records = _split_records(registry, cfg.data, cfg.split, cfg.max_examples)
    if kind == "classification":
        if ds.kind != "classify":
            raise UserError(f"dataset {ds.ref} is a '{ds.kind}' dataset; a classifier is evaluated on a classify dataset")
        metrics = _check_metrics(cfg.metrics, CLASSIFIER_METRICS, kind)
        report = _classifier(model, ds, records, cfg, metrics, ws)
    else:
        if ds.kind == "classify":
            raise UserError(f"dataset {ds.ref} is a classify dataset; {model.ref} is a causal LM (evaluate it on an lm or chat dataset)")
        allowed = LM_METRICS + (GENERATION_METRICS if ds.kind == "chat" else [])
        metrics = _check_metrics(cfg.metrics, allowed, kind)
        report = _causal_lm(model, ds, records, cfg, metrics, progress)
    return _finish(report, model, ds, cfg, ws, registry)


def _finish(report: Report, model: Model, ds, cfg, ws: Workspace, registry: Registry) -> Report:
    """Write the report folder atomically, then register it with its model and dataset."""
    folder = ws.folder("evals", f"{model.name.replace('/', '_')}-{report.kind}-{uuid.uuid4().hex[:6]}")
    report.path = str(folder)
    with atomic_dir(folder) as tmp:
        plots = {}
        for title, path in report.plots.items():  # drawn in a scratch folder; they live with the report
            shutil.move(path, tmp / Path(path).name)
            plots[title] = str(folder / Path(path).name)
            with contextlib.suppress(OSError):
                Path(path).parent.rmdir()
        report.plots = {title: str(tmp / Path(p).name) for title, p in plots.items()}
        report.write(tmp)
        report.plots = plots
    parents = ([(model.id, "evaluates")] if model.id else []) + ([(ds.id, "on_dataset")] if ds is not None else [])
    params = {"model": model.ref, "model_path": str(model.path), "dataset": ds.ref if ds is not None else getattr(cfg, "data", None),
              "dataset_id": ds.id if ds is not None else None, "split": report.split, "config": cfg.model_dump()}
    numeric = {k: v for k, v in report.metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    rec = registry.add("eval", model.name, kind=report.kind, path=folder, params=params, metrics=numeric, parents=parents)
    report.id = rec.id
    out = getattr(cfg, "out", None)
    rewrite_report(report, folder, Path(out) if out else None)  # now with its eval id
    return report


def rewrite_report(report: Report, folder: Path, html_out: Path | None = None) -> None:
    """The report files again, in place (each replaced whole), once the report knows its eval id."""
    staging = folder / f".staging-{uuid.uuid4().hex[:6]}"
    report.write(staging)
    for name in ("report.json", "report.html"):
        (staging / name).replace(folder / name)
    staging.rmdir()
    if html_out is not None:
        html_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = html_out.with_name(f".{html_out.name}.tmp")
        tmp.write_text((folder / "report.html").read_text(encoding="utf-8"), encoding="utf-8")
        tmp.replace(html_out)  # never a half-written report where the user asked for it


# -- causal LMs --------------------------------------------------------------------------------------


def _texts(tokenizer, records: list[dict]) -> list[str]:
    if records and "messages" in records[0]:
        if tokenizer.chat_template is None:
            from llmkit.data.tokenizer import CHAT_TEMPLATE

            tokenizer.chat_template = CHAT_TEMPLATE
        return [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]
    return [r["text"] for r in records]


def _causal_lm(model: Model, ds, records: list[dict], cfg: EvalConfig, metrics: list[str], progress) -> Report:
    from llmkit.eval.lm import lm_metrics, stream_nll

    lm, tokenizer = _load_lm(model)
    max_context = getattr(lm.config, "max_position_embeddings", None) or 1024
    context = cfg.context or max_context
    if context > max_context:
        raise UserError(f"eval.context = {context} exceeds {model.ref}'s context of {max_context}")
    stride = cfg.stride or context
    if stride > context:
        raise UserError(f"eval.stride = {stride} is larger than the context ({context}); it must be 1..context")
    out: dict[str, Any] = {}
    texts = _texts(tokenizer, records)
    if any(m in metrics for m in LM_METRICS):
        if cfg.source == "shards":
            ids = _shard_ids(ds, cfg.split, tokenizer)
            nll, count = stream_nll(lm, ids, context, stride, cfg.batch_size, progress)
            n_bytes = sum(len(t.encode("utf-8")) for t in texts)
            loss = nll / count
            lm_out = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": nll / math.log(2) / max(n_bytes, 1),
                      "tokens": count, "bytes": n_bytes, "context": context, "stride": stride}
        else:
            lm_out = lm_metrics(lm, tokenizer, texts, context, stride, cfg.batch_size, progress)
        if "perplexity" not in metrics:
            lm_out.pop("perplexity")
        if "bits_per_byte" not in metrics:
            lm_out.pop("bits_per_byte")
        out.update(lm_out)
    samples: list[dict] = []
    if any(m in metrics for m in GENERATION_METRICS):
        items = [_chat_item(tokenizer, r["messages"]) for r in records]
        gen, samples = _generation(_generator(model, lm), tokenizer, items, cfg, chat=False, progress=progress)
        out.update({k: v for k, v in gen.items() if k in metrics or k == "examples"})
    return Report(model.ref, "causal-lm", out, ds.ref, cfg.split, cfg.model_dump(), samples=samples[:10])


def _export_runtime(model: Model) -> str | None:
    """'llama.cpp' for a GGUF export, 'onnx' for an ONNX one, None for a model torch runs."""
    from llmkit.runtime.backends import choose_backend

    runtime = choose_backend(model)
    return None if runtime == "torch" else runtime


def _load_lm(model: Model):
    """(lm, tokenizer): an export's whole-window logits come from its runtime (`GgufLM` on llama.cpp, `OnnxLM` on
    onnxruntime), any other causal LM is the torch module."""
    from llmkit.models.io import load_causal_lm

    runtime = _export_runtime(model)
    if runtime == "llama.cpp":
        from llmkit.runtime.llama_cpp import GgufLM

        return GgufLM(model), load_tokenizer_for(model)
    if runtime == "onnx":
        from llmkit.runtime.onnx import OnnxLM

        return OnnxLM(model), load_tokenizer_for(model)
    return load_causal_lm(model)


def _generator(model: Model, lm):
    """What generates for `model`: the torch module, or for an export its runtime's backend (an export has no
    torch forward; `GgufLM`/`OnnxLM` give every position's logits, which decoding does not need)."""
    runtime = _export_runtime(model)
    if runtime is None:
        return lm
    from llmkit.runtime.backends import load_backend

    return load_backend(runtime, model)


def _shard_ids(ds, split: str, tokenizer) -> np.ndarray:
    from tokenizers import Tokenizer

    if not ds.shard_file(split).exists():
        raise UserError(f"eval.source = 'shards': dataset {ds.ref} has no token shards (only lm datasets do); use --source text")
    dataset_vocab = Tokenizer.from_file(str(ds.tokenizer_dir / "tokenizer.json")).get_vocab(with_added_tokens=True)
    if dataset_vocab != tokenizer.get_vocab():
        raise UserError(f"eval.source = 'shards': dataset {ds.ref} was tokenized with a different tokenizer "
                        f"({len(dataset_vocab)} tokens) than the model's ({len(tokenizer)}); use --source text")
    return np.asarray(ds.shard(split), dtype=np.int64)


def _chat_item(tokenizer, messages: list[dict]) -> dict[str, str]:
    """The conversation up to its last reply, rendered with a generation prompt, and that reply."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
    return {"prompt": prompt, "reference": messages[last]["content"]}


def _generation(lm, tokenizer, items: list[dict], cfg: EvalConfig, chat: bool, progress) -> tuple[dict, list[dict]]:
    from llmkit.eval.generation import generate_all, generation_metrics

    outputs = generate_all(lm, tokenizer, [i["prompt"] for i in items], cfg.max_new_tokens, chat, progress)
    predictions = [o["prediction"] for o in outputs]
    metrics = generation_metrics(predictions, [i["reference"] for i in items])
    samples = [{"prompt": i["prompt"][-200:], "reference": i["reference"][:200], "prediction": p[:200]}
               for i, p in zip(items, predictions, strict=True)]
    return metrics, samples


def _generation_file(model: Model, file: Path, cfg: EvalConfig, progress) -> Report:
    items = jsonl_objects(file, ("prompt", "reference"))
    if not items:
        raise UserError(f"{file}: no {{prompt, reference}} lines")
    items = items[: cfg.max_examples or None]
    if (runtime := _export_runtime(model)) is not None:  # generation only: its runtime's backend
        from llmkit.runtime.backends import load_backend

        lm, tokenizer = load_backend(runtime, model), load_tokenizer_for(model)
    else:
        lm, tokenizer = _load_lm(model)
    metrics, samples = _generation(lm, tokenizer, items, cfg, cfg.chat, progress)
    chosen = cfg.metrics or GENERATION_METRICS
    metrics = {k: v for k, v in metrics.items() if k in chosen or k == "examples"}
    return Report(model.ref, "generation", metrics, str(file), None, cfg.model_dump(), samples=samples[:10])


# -- classifiers -------------------------------------------------------------------------------------


def _classifier(model: Model, ds, records: list[dict], cfg: EvalConfig, metrics: list[str], ws: Workspace) -> Report:
    from llmkit.eval.classification import (
        classification_metrics,
        in_model_spelling,
        plot_confusion,
        plot_reliability,
    )
    from llmkit.runtime.backends import load_classifier_on_runtime

    clf, tokenizer, labels = load_classifier_on_runtime(model)  # an ONNX export on onnxruntime
    records = in_model_spelling(records, labels)
    unknown = sorted({r["label"] for r in records} - set(labels))
    if unknown:
        raise UserError(f"dataset {ds.ref} ({cfg.split}) has labels {unknown} that {model.ref} does not know; its labels: {labels}")
    index = {label: i for i, label in enumerate(labels)}
    max_length = (model.lineage or {}).get("max_length") or 512
    order = sorted(range(len(records)), key=lambda i: len(records[i]["text"]))
    probs = np.zeros((len(records), len(labels)), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(order), cfg.batch_size * 4):
            chunk = order[start: start + cfg.batch_size * 4]
            enc = tokenizer([records[i]["text"] for i in chunk], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            logits = clf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            probs[chunk] = logits.float().softmax(-1).numpy()
    golds = [index[r["label"]] for r in records]
    full = classification_metrics(golds, probs, labels)
    keep = {"accuracy": ["accuracy"], "precision": ["precision"], "recall": ["recall"], "f1": ["f1"], "roc_auc": ["roc_auc"], "ece": ["ece"]}
    wanted = {k for m in metrics for k in keep[m]}
    out = {k: v for k, v in full.items() if k == "examples" or k.startswith("support_") or any(
        k == w or k.startswith(f"{w}_") or k.endswith(f"_{w}") for w in wanted)}
    scratch = Path(tempfile.mkdtemp(prefix=".plots-", dir=ws.root))  # same filesystem as the report folder
    plots = {"confusion matrix": str(plot_confusion(golds, probs.argmax(1), labels, scratch / "confusion.png", f"{model.ref} on {ds.ref} ({cfg.split})"))}
    if "ece" in metrics:
        plots["reliability diagram"] = str(plot_reliability(np.asarray(golds), probs, scratch / "reliability.png", f"{model.ref}"))
    samples = [{"text": records[i]["text"][:120], "label": records[i]["label"], "predicted": labels[int(probs[i].argmax())],
                "confidence": float(probs[i].max())} for i in range(min(10, len(records)))]
    return Report(model.ref, "classification", out, ds.ref, cfg.split, cfg.model_dump(), plots=plots, samples=samples)


# -- speed -------------------------------------------------------------------------------------------


def bench_model(model_ref: str, cfg: BenchModelConfig, ws: Workspace | None = None, registry: Registry | None = None,
                progress=None) -> Report:
    from llmkit.eval.speed import disk_size_bytes, measure_classifier, measure_lm, peak_rss_mb
    from llmkit.runtime.backends import backend_name, choose_backend, load_backend

    cfg = BenchModelConfig.given(cfg, "llmkit.eval.bench_model")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    model = resolve_model(model_ref, registry)
    kind = model_kind(model)
    if kind not in ("causal", "classifier"):  # an encoder went on to the LM decoder: "failed: KeyError: 'cache'", exit 1
        raise UserError(f"{model.ref} is an {kind} (no language-model or classifier head): bench-model measures causal LMs "
                        f"and classifiers; fine-tune it into a classifier first (llmkit train classify --base {model.name} "
                        "--data NAME)")
    if kind == "classifier":
        # a classifier runs where its files run (torch, or onnxruntime for an ONNX export): another --backend was
        # ignored and torch measured
        runs_on = choose_backend(model)
        if backend_name(cfg.backend) not in ("auto", runs_on):
            how = (f"; make an ONNX one with: llmkit export {model.ref} --format onnx" if runs_on == "torch"
                   and backend_name(cfg.backend) == "onnx" else "")
            raise UserError(f"{model.ref} is a classifier that runs on {runs_on}, not {cfg.backend}{how}",
                            param="bench_model.backend")
        figures = measure_classifier(model, cfg.prompt_tokens, cfg.runs, cfg.warmup)
        figures["backend"] = runs_on
    else:
        backend = choose_backend(model, cfg.backend)
        runner = load_backend(backend, model)
        prompt_tokens, new_tokens = cfg.prompt_tokens, cfg.new_tokens
        if runner.max_len and prompt_tokens + new_tokens > runner.max_len and not (
                {"prompt_tokens", "new_tokens"} & cfg.model_fields_set):  # the defaults (128 + 64) past a small context
            prompt_tokens = new_tokens = max(1, runner.max_len // 2)
        figures = measure_lm(runner, prompt_tokens, new_tokens, cfg.runs, cfg.warmup, progress=progress)
        figures["backend"] = backend
    figures.update({"peak_rss_mb": round(peak_rss_mb(), 1), "size_mb": round(disk_size_bytes(model) / 2**20, 3),
                    "threads": torch.get_num_threads()})
    report = Report(model.ref, "speed", figures, None, None, {**cfg.model_dump(), "backend": cfg.backend})
    return _finish(report, model, None, cfg, ws, registry)
