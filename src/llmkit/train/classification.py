"""`llmkit train classify`: a text classifier from any HF encoder or decoder.

The base gets a new sequence-classification head (`AutoModelForSequenceClassification`) for the
dataset's labels; full fine-tuning or LoRA (adapters plus the head). Class weights counter
imbalance; every epoch is evaluated (accuracy, macro-F1, per-class precision and recall) and the
best epoch's weights are kept; the test split is scored at the end with a confusion-matrix plot.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from llmkit.config import ClassifyConfig
from llmkit.data.dataset import open_dataset
from llmkit.errors import UserError
from llmkit.eval.classification import plot_confusion
from llmkit.models.io import Model, load_classifier, resolve_model, save_model
from llmkit.models.naming import output_name
from llmkit.registry import Registry
from llmkit.train.checkpoint import resume_run, run_model_folder, tracks_runs
from llmkit.train.finetune import FinetuneJob, enable_checkpointing, fit
from llmkit.train.lora import apply_lora, save_adapter
from llmkit.workspace import Workspace

BUCKET = 64  # batches drawn from a window of this many batches are length-sorted: less padding, still random


def classify_dataset(registry: Registry, ref: str | None, key: str):
    if not ref:
        raise UserError(f"{key} is not set: pass --data NAME (a dataset from 'llmkit data prepare --task classify')")
    ds = open_dataset(registry, ref)
    if ds.kind != "classify":
        raise UserError(f"dataset {ds.ref} is a '{ds.kind}' dataset; classification needs one prepared with --task classify")
    return ds, {s: ds.records(s) for s in ("train", "val", "test")}


def check_labels(splits: dict[str, list[dict]], ds_ref: str) -> list[str]:
    """The label set (from train, sorted); an error when val/test hold labels train never shows."""
    labels = sorted({r["label"] for r in splits["train"]})
    if len(labels) < 2:
        raise UserError(f"dataset {ds_ref}: the train split has {len(labels)} label(s) ({', '.join(labels)}); a classifier needs at least 2")
    for split in ("val", "test"):
        unseen = sorted({r["label"] for r in splits[split]} - set(labels))
        if unseen:
            # A label seen once lands in val or test by its hash: say how few records it has, not just "more data".
            held = Counter(r["label"] for s in ("val", "test") for r in splits[s] if r["label"] in unseen)
            few = ", ".join(f"'{label}' {n} record{'s' if n != 1 else ''}" for label, n in sorted(held.items()))
            raise UserError(f"dataset {ds_ref}: {split} labels {unseen} never occur in train; train labels: {labels}, "
                            f"{split} labels: {sorted({r['label'] for r in splits[split]})}. Outside train: {few}; a class "
                            "needs training records: give more records of it, or merge it into another label or drop its "
                            "rows, and prepare again")
    return labels


def unknown_share(tokenizer, texts: list[str]) -> tuple[float, list[str]]:
    """(share of the texts' tokens that are the unknown token, the commonest text spans read as it)."""
    unk = tokenizer.unk_token_id
    if unk is None or not texts:
        return 0.0, []
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=getattr(tokenizer, "is_fast", False))
    total = sum(len(ids) for ids in enc["input_ids"])
    unknown = Counter()
    for i, ids in enumerate(enc["input_ids"]):
        for j, token in enumerate(ids):
            if token == unk:
                start, end = enc["offset_mapping"][i][j] if "offset_mapping" in enc else (0, 0)
                unknown[texts[i][start:end] or tokenizer.unk_token] += 1
    return (sum(unknown.values()) / total if total else 0.0), [span for span, _ in unknown.most_common(6)]


class Encoded:
    """Token ids of a split's texts and their label indexes."""

    def __init__(self, tokenizer, records: list[dict], label_index: dict[str, int], max_length: int):
        texts = [r["text"] for r in records]
        enc = tokenizer(texts, truncation=False, add_special_tokens=True)["input_ids"] if texts else []
        self.truncated = sum(len(ids) > max_length for ids in enc)
        self.ids = [ids[: max_length - 1] + ids[-1:] if len(ids) > max_length else ids for ids in enc]  # keep [SEP]/eos
        self.labels = [label_index[r["label"]] for r in records]

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        width = max(len(self.ids[i]) for i in index)
        ids = torch.full((len(index), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            ids[row, : len(self.ids[i])] = torch.tensor(self.ids[i])
            mask[row, : len(self.ids[i])] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([self.labels[i] for i in index])}

    def epoch_batches(self, batch_size: int, seed: int, epoch: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(self), generator=g).tolist()
        batches = []
        window = batch_size * BUCKET
        for start in range(0, len(order), window):
            chunk = sorted(order[start: start + window], key=lambda i: len(self.ids[i]))
            batches += [chunk[k: k + batch_size] for k in range(0, len(chunk), batch_size)]
        shuffle = torch.randperm(len(batches), generator=g).tolist()
        return [self.batch(batches[i], pad_id) for i in shuffle]

    def eval_batches(self, batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
        order = sorted(range(len(self)), key=lambda i: len(self.ids[i]))
        return [self.batch(order[k: k + batch_size], pad_id) for k in range(0, len(order), batch_size)]


def class_weights(labels: list[int], n: int, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = Counter(labels)
    total = len(labels)
    return torch.tensor([total / (n * max(counts.get(i, 0), 1)) for i in range(n)], dtype=torch.float32)


@torch.no_grad()
def predict_batches(model, batches: list[dict[str, torch.Tensor]], device: str) -> tuple[list[int], list[int], torch.Tensor]:
    model.eval()
    golds, preds, probs = [], [], []
    for batch in batches:
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        p = logits.float().softmax(-1).cpu()
        probs.append(p)
        preds += p.argmax(-1).tolist()
        golds += batch["labels"].tolist()
    return golds, preds, torch.cat(probs) if probs else torch.zeros(0)


def scores(golds: list[int], preds: list[int], labels: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    idx = list(range(len(labels)))
    precision, recall, f1, _ = precision_recall_fscore_support(golds, preds, labels=idx, zero_division=0)
    out = {"accuracy": float(accuracy_score(golds, preds)),
           "macro_f1": float(f1_score(golds, preds, labels=idx, average="macro", zero_division=0))}
    for i, label in enumerate(labels):
        out[f"precision_{label}"], out[f"recall_{label}"], out[f"f1_{label}"] = float(precision[i]), float(recall[i]), float(f1[i])
    return out


@tracks_runs
def classify(cfg: ClassifyConfig, ws: Workspace | None = None, registry: Registry | None = None, console=None,
             stop_at_step: int | None = None) -> Model:
    cfg = ClassifyConfig.given(cfg, "llmkit.train.classify")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    cfg, run_dir, run_id = resume_run(cfg, "classify", registry)
    if not cfg.base:
        raise UserError("classify.base is not set: pass --base MODEL (minilm-l6, a registry name or a model folder)")
    ds_rec, splits = classify_dataset(registry, cfg.data, "classify.data")
    labels = check_labels(splits, ds_rec.ref)
    base = resolve_model(cfg.base, registry)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.seed)  # the new head's initial weights
    model, tokenizer, _ = load_classifier(base, labels)
    model.to(device)
    pad_id = tokenizer.pad_token_id
    index = {label: i for i, label in enumerate(labels)}
    train = Encoded(tokenizer, splits["train"], index, cfg.max_length)
    eval_split = "val" if splits["val"] else "test"
    val = Encoded(tokenizer, splits[eval_split][: cfg.eval_max_examples or None], index, cfg.max_length)
    test = Encoded(tokenizer, splits["test"], index, cfg.max_length)
    if len(val) == 0:
        raise UserError(f"dataset {ds_rec.ref} has no val or test records to evaluate on; prepare it again with a val split (llmkit data prepare ... --splits-val 0.2)")
    weights = class_weights(train.labels, len(labels), cfg.class_weights)
    if console is not None:
        counts = Counter(r["label"] for r in splits["train"])
        console.print(f"data {ds_rec.ref}: {len(train)} train ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
                      f"{len(val)} {eval_split}, {len(test)} test; {train.truncated} train texts truncated to {cfg.max_length} tokens"
                      + ("" if weights is None else f"; class weights {', '.join(f'{w:.2f}' for w in weights.tolist())}"))
        unknown, spans = unknown_share(tokenizer, [r["text"] for r in splits["train"][:2000]])
        if unknown >= 0.02:  # minilm-l6 reads most Chinese characters as [UNK] and trained on without a word
            console.print(f"[yellow]warning:[/yellow] {unknown:.0%} of the training text's tokens are "
                          f"{tokenizer.unk_token} for {base.ref}'s tokenizer (such as {' '.join(spans)}): the model cannot "
                          "see them; a base whose vocabulary covers this text learns more", highlight=False)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model, "classify.gradient_checkpointing")
    if cfg.method == "lora":
        model = apply_lora(model, cfg.lora, "SEQ_CLS", "classify.lora")
    weights = None if weights is None else weights.to(device)

    def loss_fn(m, batch):
        logits = m(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        return F.cross_entropy(logits.float(), batch["labels"].to(device), weight=weights), int(batch["attention_mask"].sum())

    val_batches = val.eval_batches(cfg.batch_size * 2, pad_id)

    def evaluate(m) -> dict[str, float]:
        golds, preds, _ = predict_batches(m, val_batches, device)
        return {f"val_{k}": v for k, v in scores(golds, preds, labels).items()}

    name = output_name("classify", cfg.name, f"{base.name.split('/')[-1]}-{ds_rec.name}-classifier")
    parents = [(ds_rec.id, "trained_on")] + ([(base.id, "base_model")] if base.id else [])
    job = FinetuneJob("classify", name, model, lambda epoch: train.epoch_batches(cfg.batch_size, cfg.seed, epoch, pad_id),
              loss_fn, evaluate, score="val_macro_f1", higher_is_better=True, parents=parents,
              info={"method": cfg.method, "labels": labels, "train_examples": len(train), "truncated": train.truncated})
    fitted = fit(job, cfg, "classify", ws, registry, run_dir, run_id, console, stop_at_step)

    final_split, final = ("test", test) if len(test) else (eval_split, val)
    golds, preds, _ = predict_batches(fitted.model, final.eval_batches(cfg.batch_size * 2, pad_id), device)
    test_scores = {f"{final_split}_{k}": v for k, v in scores(golds, preds, labels).items()}
    plot = plot_confusion(golds, preds, labels, fitted.run_dir / "plots" / "confusion.png", f"{name}: {final_split} split")
    summary = {**fitted.summary, **test_scores}
    registry.update_metrics(fitted.run_id, summary)
    lineage = {"format": "llmkit.model/1", "task": "classification", "method": cfg.method, "labels": labels,
               "max_length": cfg.max_length, "base": {"path": str(base.path), "ref": base.ref, "id": base.id},
               "parent_model": {"path": str(base.path), "ref": base.ref, "id": base.id},
               "dataset": {"id": ds_rec.id, "ref": ds_rec.ref}, "run": {"id": fitted.run_id, "path": str(fitted.run_dir)},
               "metrics": summary, "config": cfg.model_dump()}
    target = run_model_folder(ws, name, fitted.run_id, fitted.summary.get("steps", 0))
    if cfg.method == "full":
        save_model(fitted.model.to("cpu"), tokenizer, target, lineage)
    else:
        save_adapter(fitted.model, tokenizer, target, base, lineage)
    rec = registry.add("model", name, kind="classification", path=target, params={"method": cfg.method, "base": base.ref, "labels": labels},
                       metrics=summary, parents=[(fitted.run_id, "produced_by"), *parents])
    if console is not None:
        s = summary
        console.print(f"{final_split}: accuracy {s[f'{final_split}_accuracy']:.4f}, macro-F1 {s[f'{final_split}_macro_f1']:.4f}; "
                      + ", ".join(f"{label} P {s[f'{final_split}_precision_{label}']:.3f} R {s[f'{final_split}_recall_{label}']:.3f}" for label in labels[:8]))
        console.print(f"{s['trainable_parameters']:,} trainable of {s['total_parameters']:,} parameters; peak memory "
                      f"{s['peak_memory_mb']:.0f} MiB; {s['seconds']:.1f}s; confusion matrix {plot}")
        console.print(f"model [bold]{rec.ref}[/bold] at {target}")
    return Model(target, name, rec.id, rec.version, lineage)

