"""`llmkit train distill`: a small student learns a big teacher's output distribution.

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * hard loss

(Hinton et al.; the T^2 keeps the soft term's gradients on the hard term's scale.) The hard loss is
cross-entropy on the label for classifiers and on the next token for causal LMs. Teacher and
student must share the tokenizer, since the KL compares distributions over the same vocabulary or
label set. The student is an existing model, or a new one of a preset size built from the
teacher's own config (same architecture and vocabulary, fewer and narrower layers).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from llmkit.config import DistillConfig
from llmkit.data.dataset import open_dataset
from llmkit.errors import UserError
from llmkit.models.io import (
    Model,
    load_causal_lm,
    load_classifier,
    quiet_transformers,
    resolve_model,
    save_model,
)
from llmkit.models.kind import model_kind
from llmkit.models.naming import output_name
from llmkit.models.presets import PRESETS
from llmkit.registry import Registry
from llmkit.train.checkpoint import resume_run, run_model_folder, tracks_runs
from llmkit.train.classification import Encoded, check_labels, classify_dataset, predict_batches, scores
from llmkit.train.finetune import FinetuneJob, count_params, enable_checkpointing, fit
from llmkit.workspace import Workspace


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2-scaled KL(teacher || student) over the last dimension, averaged over the other positions."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1).reshape(-1, student_logits.size(-1))
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1).reshape(-1, teacher_logits.size(-1))
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def _same_tokenizer(teacher_tok, student_tok, student: Model) -> None:
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise UserError(f"student {student.ref} has a different tokenizer from the teacher ({len(student_tok)} vs "
                        f"{len(teacher_tok)} tokens, or different ids); distillation compares distributions over the same "
                        "vocabulary. Use --student-preset to build a student on the teacher's tokenizer")


def _student_from_preset(teacher, cfg: DistillConfig, classifier: bool):
    """A fresh model with the teacher's architecture and vocabulary at a preset's width and depth."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = teacher.config.__class__.from_dict(teacher.config.to_dict())
    size = dict(PRESETS[cfg.student_preset])
    if cfg.student_layers:
        size["num_hidden_layers"] = cfg.student_layers
    for key, value in size.items():
        setattr(config, key, value)
    if hasattr(config, "num_key_value_heads"):
        config.num_key_value_heads = size["num_attention_heads"]
    if hasattr(config, "head_dim"):
        config.head_dim = size["hidden_size"] // size["num_attention_heads"]
    torch.manual_seed(cfg.seed)
    cls = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    return cls.from_config(config)


@tracks_runs
def distill(cfg: DistillConfig, ws: Workspace | None = None, registry: Registry | None = None, console=None,
            stop_at_step: int | None = None) -> Model:
    cfg = DistillConfig.given(cfg, "llmkit.train.distill")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    cfg, run_dir, run_id = resume_run(cfg, "distill", registry)
    if not cfg.teacher:
        raise UserError("distill.teacher is not set: pass --teacher MODEL")
    if bool(cfg.student) == bool(cfg.student_preset):
        raise UserError("distill: give exactly one of --student MODEL or --student-preset P")
    quiet_transformers()
    teacher_ref = resolve_model(cfg.teacher, registry)
    classifier = model_kind(teacher_ref) == "classifier"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if classifier:
        teacher, tokenizer, labels = load_classifier(teacher_ref)
    else:
        teacher, tokenizer = load_causal_lm(teacher_ref)
        labels = None
    student_ref = resolve_model(cfg.student, registry) if cfg.student else None
    student_kind = model_kind(student_ref) if student_ref is not None else None
    # a classifier teacher takes a classifier or an encoder (given a new head, as train classify gives minilm-l6
    # one: it was refused and called "a causal LM"); a causal teacher takes a causal LM
    fits = {"classifier", "encoder"} if classifier else {"causal"}
    if student_kind is not None and student_kind not in fits:
        names = {"classifier": "a classifier", "encoder": "an encoder", "causal": "a causal LM"}
        raise UserError(f"distill.student = '{cfg.student}' is {names[student_kind]} and the teacher {teacher_ref.ref} is "
                        f"{'a classifier' if classifier else 'a causal LM'}; give a student of the teacher's kind"
                        + (" (or an encoder)" if classifier else "") + ", or --student-preset P to build one")
    if student_ref is not None:
        if classifier:
            student, student_tok, _ = load_classifier(student_ref, labels)
        else:
            student, student_tok = load_causal_lm(student_ref)
        _same_tokenizer(tokenizer, student_tok, student_ref)
    else:
        student = _student_from_preset(teacher, cfg, classifier)
    if cfg.gradient_checkpointing:
        enable_checkpointing(student, "distill.gradient_checkpointing")
    teacher.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.to(device).train()
    t_params, s_params = count_params(teacher)[1], count_params(student)[1]

    if classifier:
        job, teacher_scores = _classifier_job(cfg, registry, teacher, student, tokenizer, labels, device)
    else:
        job, teacher_scores = _lm_job(cfg, registry, teacher, student, tokenizer, device)
    job.name = output_name("distill", cfg.name, f"{teacher_ref.name.split('/')[-1]}-student")
    job.parents += [(teacher_ref.id, "teacher")] if teacher_ref.id else []
    # an existing student is what the new model's weights start from: in its lineage (and protected from rm) as the
    # teacher is
    job.parents += [(student_ref.id, "student")] if student_ref is not None and student_ref.id else []
    # The student before any distillation: what the run improves on. Measured on --resume too (the
    # student is rebuilt or reloaded as it started; the checkpoint is loaded later), so the summary keeps it.
    before = job.evaluate(student)
    student.train()
    job.info[f"student_{job.score}_before"] = before[job.score]
    job.info.update({"teacher_parameters": t_params, "student_parameters": s_params,
                     "parameter_ratio": round(s_params / t_params, 4), **teacher_scores})
    if console is not None:
        console.print(f"teacher {teacher_ref.ref}: {t_params:,} parameters; student: {s_params:,} ({s_params / t_params:.1%}); "
                      f"temperature {cfg.temperature}, alpha {cfg.alpha}; teacher on val: "
                      + ", ".join(f"{k} {v:.4f}" for k, v in teacher_scores.items())
                      + f"; student before distillation: {job.score} {before[job.score]:.4f}")
    score_test = job.info.pop("score_test", None)  # a function, not a figure: kept out of the summary
    fitted = fit(job, cfg, "distill", ws, registry, run_dir, run_id, console, stop_at_step)
    if classifier:
        # The best student was picked on val, so val flatters it; the test split is the fair comparison.
        fitted.summary.update(score_test(fitted.model))
        split = "test" if "test_accuracy" in fitted.summary else "val"
        kept = fitted.summary[f"{split}_accuracy"] / max(fitted.summary[f"teacher_{split}_accuracy"], 1e-9)
        fitted.summary["accuracy_kept"] = round(kept, 4)
        registry.update_metrics(fitted.run_id, fitted.summary)

    lineage = {"format": "llmkit.model/1", "task": "classification" if classifier else "causal-lm", "method": "distill",
               "labels": labels, "max_length": cfg.max_length,
               "parent_model": {"path": str(teacher_ref.path), "ref": teacher_ref.ref, "id": teacher_ref.id, "relation": "teacher"},
               "dataset": {"id": job.info["dataset_id"], "ref": job.info["dataset"]},
               "run": {"id": fitted.run_id, "path": str(fitted.run_dir)}, "metrics": fitted.summary, "config": cfg.model_dump()}
    target = run_model_folder(ws, job.name, fitted.run_id, fitted.summary.get("steps", 0))
    save_model(fitted.model.to("cpu"), tokenizer, target, lineage)
    rec = registry.add("model", job.name, kind=lineage["task"], path=target, params={"method": "distill", "teacher": teacher_ref.ref},
                       metrics=fitted.summary, parents=[(fitted.run_id, "produced_by"), *job.parents])
    if console is not None:
        s = fitted.summary
        split = "test" if "test_accuracy" in s else "val"
        # macro-F1 beside accuracy: on imbalanced labels a student that always says the majority label keeps ~100 %
        # of the teacher's accuracy (89 % against 85 % on SMS spam) with a macro-F1 of 0.47
        f1 = (f", macro-F1 {s[f'{split}_macro_f1']:.4f} vs {s[f'teacher_{split}_macro_f1']:.4f}"
              if f"{split}_macro_f1" in s and f"teacher_{split}_macro_f1" in s else "")
        figures = (f"student {split} accuracy {s.get(f'{split}_accuracy', 0):.4f} vs teacher {s.get(f'teacher_{split}_accuracy', 0):.4f} "
                   f"({s.get('accuracy_kept', 0):.1%} kept){f1}") if classifier else \
                  (f"student val perplexity {s['val_ppl']:.2f} vs teacher {teacher_scores['teacher_val_ppl']:.2f}")
        console.print(f"{figures}; {s_params / t_params:.1%} of the teacher's parameters; {s['seconds']:.1f}s")
        console.print(f"model [bold]{rec.ref}[/bold] at {target}")
    return Model(target, job.name, rec.id, rec.version, lineage)


def _classifier_job(cfg, registry, teacher, student, tokenizer, labels, device):
    ds_rec, splits = classify_dataset(registry, cfg.data, "distill.data")
    data_labels = check_labels(splits, ds_rec.ref)
    unknown = sorted(set(data_labels) - set(labels))
    if unknown:
        raise UserError(f"dataset {ds_rec.ref} has labels {unknown} the teacher does not know; teacher labels: {labels}")
    index = {label: i for i, label in enumerate(labels)}
    train = Encoded(tokenizer, splits["train"], index, cfg.max_length)
    val = Encoded(tokenizer, (splits["val"] or splits["test"])[: cfg.eval_max_examples or None], index, cfg.max_length)
    if len(val) == 0:
        raise UserError(f"dataset {ds_rec.ref} has no val or test records to evaluate on")
    pad = tokenizer.pad_token_id
    val_batches = val.eval_batches(cfg.batch_size * 2, pad)
    golds, preds, _ = predict_batches(teacher, val_batches, device)
    teacher_scores = {f"teacher_val_{k}": scores(golds, preds, labels)[k] for k in ("accuracy", "macro_f1")}

    def loss_fn(model, batch):
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with torch.no_grad():
            t_logits = teacher(input_ids=ids, attention_mask=mask).logits
        s_logits = model(input_ids=ids, attention_mask=mask).logits
        hard = F.cross_entropy(s_logits.float(), batch["labels"].to(device))
        return cfg.alpha * soft_loss(s_logits, t_logits, cfg.temperature) + (1 - cfg.alpha) * hard, int(mask.sum())

    def evaluate(model):
        g, p, _ = predict_batches(model, val_batches, device)
        return {f"val_{k}": v for k, v in scores(g, p, labels).items()}

    test = Encoded(tokenizer, splits["test"], index, cfg.max_length)

    def score_test(model) -> dict[str, float]:
        if len(test) == 0:
            return {}
        batches = test.eval_batches(cfg.batch_size * 2, pad)
        out = {}
        for who, m in (("", model), ("teacher_", teacher)):
            g, p, _ = predict_batches(m, batches, device)
            # Recall per class too: on a skewed split, accuracy alone cannot tell a student from "always the majority".
            out.update({f"{who}test_{k}": v for k, v in scores(g, p, labels).items()
                        if k in ("accuracy", "macro_f1") or k.startswith("recall_")})
        return out

    job = FinetuneJob("distill", "", student, lambda epoch: train.epoch_batches(cfg.batch_size, cfg.seed, epoch, pad), loss_fn,
              evaluate, score="val_accuracy", higher_is_better=True, parents=[(ds_rec.id, "trained_on")],
              info={"dataset": ds_rec.ref, "dataset_id": ds_rec.id, "score_test": score_test})
    return job, teacher_scores


def _token_windows(tokenizer, records: list[dict], length: int) -> torch.Tensor:
    """Every record's text (a chat rendered with the template) tokenized, joined by eos, cut into
    rows of length + 1 tokens."""
    sep = tokenizer.eos_token_id
    ids: list[int] = []
    for rec in records:
        text = tokenizer.apply_chat_template(rec["messages"], tokenize=False) if "messages" in rec else rec["text"]
        ids.append(sep)
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    rows = len(ids) // (length + 1)
    return torch.from_numpy(np.asarray(ids[: rows * (length + 1)], dtype=np.int64).reshape(rows, length + 1))


def _lm_job(cfg, registry, teacher, student, tokenizer, device):
    if not cfg.data:
        raise UserError("distill.data is not set: pass --data NAME (an lm or chat dataset)")
    ds_rec = open_dataset(registry, cfg.data)
    if ds_rec.kind not in ("lm", "chat"):
        raise UserError(f"dataset {ds_rec.ref} is a '{ds_rec.kind}' dataset; distilling a language model needs an lm or chat dataset")
    train = _token_windows(tokenizer, ds_rec.records("train"), cfg.max_length)
    val = _token_windows(tokenizer, ds_rec.records("val") or ds_rec.records("test"), cfg.max_length)
    if cfg.eval_max_examples:
        val = val[: cfg.eval_max_examples]
    if len(train) == 0 or len(val) == 0:
        raise UserError(f"dataset {ds_rec.ref} has fewer than {cfg.max_length + 1} tokens in train or val; lower --max-length")
    val_batches = [val[k: k + cfg.batch_size] for k in range(0, len(val), cfg.batch_size)]

    @torch.no_grad()
    def lm_eval(model) -> dict[str, float]:
        model.eval()
        total, count = 0.0, 0
        for rows in val_batches:
            rows = rows.to(device)
            logits = model(input_ids=rows[:, :-1]).logits  # (B, T, V)
            total += float(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1), reduction="sum"))
            count += rows[:, 1:].numel()
        mean = total / max(count, 1)
        return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50.0))}

    teacher_eval = lm_eval(teacher)
    teacher_scores = {"teacher_val_loss": teacher_eval["val_loss"], "teacher_val_ppl": teacher_eval["val_ppl"]}

    def loss_fn(model, rows):
        rows = rows.to(device)
        x, y = rows[:, :-1], rows[:, 1:]                    # (B, T) inputs and next tokens
        with torch.no_grad():
            t_logits = teacher(input_ids=x).logits          # (B, T, V)
        s_logits = model(input_ids=x).logits
        hard = F.cross_entropy(s_logits.float().reshape(-1, s_logits.size(-1)), y.reshape(-1))
        return cfg.alpha * soft_loss(s_logits, t_logits, cfg.temperature) + (1 - cfg.alpha) * hard, y.numel()

    def epoch_batches(epoch: int):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        return [train[order[k: k + cfg.batch_size]] for k in range(0, len(order), cfg.batch_size)]

    job = FinetuneJob("distill", "", student, epoch_batches, loss_fn, lm_eval, score="val_loss", parents=[(ds_rec.id, "trained_on")],
              info={"dataset": ds_rec.ref, "dataset_id": ds_rec.id})
    return job, teacher_scores
