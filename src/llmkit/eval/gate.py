"""The promotion gate of `llmkit compare BASE TUNED --data NAME`: did TUNED get better at the task
without losing what BASE could do?

Both models are scored item by item on the dataset's held-out split (eval.items) and, for causal LMs,
on the general-ability check shipped with llmkit (eval.general). The items whose outcome flipped are
listed both ways, and each threshold of the `compare` config section is a check with a one-line
message; the verdict passes when every check does. The result is registered as an `eval` record of
kind `compare` under TUNED (relation `gated`), which `llmkit promote --require-pass` reads.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import numpy as np

from llmkit.config import CompareConfig
from llmkit.data.dataset import open_dataset
from llmkit.errors import UserError
from llmkit.eval.evaluation import model_task, rewrite_report
from llmkit.eval.items import (
    chat_items,
    classifier_items,
    item_id,
    lm_items,
    load_lm,
    preference_items,
    rated_items,
    refuse_export,
)
from llmkit.eval.report import Report
from llmkit.models.io import Model, resolve_model
from llmkit.registry import Registry
from llmkit.workspace import Workspace, atomic_dir

TASK_METRIC = {"classify": "accuracy", "chat": "rougeL", "lm": "perplexity", "preference": "preference_accuracy",
               "rated": "rated_answer_auc"}


def held_out_split(ds, split: str | None) -> tuple[str, list[dict]]:
    """The split to score: the one asked for, else test when it has records, else val."""
    counts = ds.split_counts()
    if split is None:
        split = "test" if counts.get("test") else "val"
    records = ds.records(split)
    if not records:
        have = ", ".join(f"{s} ({n})" for s, n in counts.items() if n) or "none"
        raise UserError(f"compare.split = '{split}': dataset {ds.ref} has no records there; splits with records: {have}")
    return split, records


def score(model: Model, kind: str, records: list[dict], cfg: CompareConfig, progress=None) -> dict[str, Any]:
    """One model's items, task figure and (causal LMs, compare.general) general check."""
    from llmkit.eval.general import general_check

    if kind == "classify":
        return {"items": classifier_items(model, records), "general": None}
    lm, tokenizer = load_lm(model)
    if kind == "chat":
        items = chat_items(lm, tokenizer, records, cfg.max_new_tokens, progress)
    elif kind == "preference":
        items = preference_items(lm, tokenizer, records, progress)
    elif kind == "rated":
        items = rated_items(lm, tokenizer, records, progress)
    else:
        items = lm_items(lm, tokenizer, records, progress)
    return {"items": items, "general": general_check(lm, tokenizer, progress) if cfg.general else None}


def task_figure(kind: str, items: list[dict]) -> float:
    """Accuracy (classify), mean ROUGE-L (chat), share of pairs ranked right (preference), AUC of rated answers
    (rated) or perplexity over every scored token (lm)."""
    if kind == "lm":
        tokens = sum(i["tokens"] for i in items)
        return math.exp(min(sum(i["nll"] for i in items) / max(tokens, 1), 50.0))
    return sum(i["score"] for i in items) / len(items)


def improvement_interval(kind: str, base: list[dict], tuned: list[dict], resamples: int = 1000) -> list[float]:
    """A 95 % paired bootstrap interval of the task improvement: the same items resampled for both models, so
    what the gate reads as better can be told from what one more or one fewer item would have changed."""
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(base), size=(resamples, len(base)))
    if kind == "lm":  # perplexity over the picked documents' tokens; improvement is its relative decrease
        def mean_nll(side: list[dict]) -> np.ndarray:  # each model over its own tokens, as in task_figure
            tokens = np.array([i["tokens"] for i in side], dtype=float)[picks].sum(1).clip(min=1)
            return np.array([i["nll"] for i in side])[picks].sum(1) / tokens

        nll_b, nll_t = mean_nll(base), mean_nll(tuned)
        draws = 1.0 - np.exp(np.minimum(nll_t, 50.0) - np.minimum(nll_b, 50.0))
    else:
        diff = np.array([t["score"] - b["score"] for b, t in zip(base, tuned, strict=True)])
        draws = diff[picks].mean(1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return [float(low), float(high)]


def sample_warnings(task: dict[str, Any], items: int) -> list[str]:
    """What the verdict cannot tell on this split: too few items, or a change within the interval's noise."""
    out = []
    low, high = task["interval"]
    if items < 30:
        out.append(f"{items} held-out item{'s' if items != 1 else ''}: a verdict on so few says little "
                   "(score a larger split, or prepare more held-out data)")
    if low <= 0.0 <= high:
        out.append(f"the {task['metric']} change {task['improvement']:+.4f} is within its 95 % interval "
                   f"[{low:+.4f}, {high:+.4f}] of no change over these {items} items")
    return out


def tokenizer_warnings(kind: str, sides: list[dict]) -> list[str]:
    """Perplexity is per token: two models that cut the same text into different tokens (a character model and a
    BPE one) have perplexities in different units, and the gate's lm figures, interval and flips mix them."""
    if kind != "lm":
        return []
    counts = [sum(i["tokens"] for i in side["items"]) for side in sides]
    if counts[0] == counts[1]:
        return []
    return [f"the two models cut the held-out text into different tokens ({counts[0]:,} and {counts[1]:,}): perplexity "
            "per token does not compare across tokenizers, so the lm figures and flips mix units; gate a model against "
            "its own fine-tune, or compare bits per byte with llmkit eval"]


def flips(kind: str, base: list[dict], tuned: list[dict], cfg: CompareConfig) -> tuple[list[int], list[int]]:
    """(indices that went better -> worse, indices that went worse -> better)."""
    if kind == "lm":  # no pass/fail for a document: a flip is a loss that moved by more than the margin
        deltas = [t["loss"] - b["loss"] for b, t in zip(base, tuned, strict=True)]
        return ([i for i, d in enumerate(deltas) if d > cfg.item_loss_margin],
                [i for i, d in enumerate(deltas) if d < -cfg.item_loss_margin])
    threshold = 0.5 if kind in ("classify", "preference", "rated") else cfg.item_pass_score
    passed = [(b["score"] >= threshold, t["score"] >= threshold) for b, t in zip(base, tuned, strict=True)]
    return [i for i, (b, t) in enumerate(passed) if b and not t], [i for i, (b, t) in enumerate(passed) if t and not b]


def _check(name: str, ok: bool, message: str) -> dict[str, Any]:
    return {"check": name, "passed": ok, "message": message}


def checks(kind: str, task: dict[str, float], regressed: int, items: int, general: dict | None,
           cfg: CompareConfig) -> list[dict[str, Any]]:
    """Each threshold of the `compare` section as a check with its message."""
    metric = TASK_METRIC[kind]
    change = "relative decrease" if kind == "lm" else "change"
    out = [_check("task", task["improvement"] >= cfg.min_task_improvement,
                  f"{metric} {task['base']:.4f} -> {task['tuned']:.4f} ({change} {task['improvement']:+.4f}, 95 % "
                  f"interval [{task['interval'][0]:+.4f}, {task['interval'][1]:+.4f}]; "
                  f"compare.min_task_improvement = {cfg.min_task_improvement:+.4f})")]
    share = regressed / max(items, 1)
    out.append(_check("regressed share", share <= cfg.max_regressed_share,
                      f"{regressed} of {items} items went from better to worse ({share:.1%}; "
                      f"compare.max_regressed_share = {cfg.max_regressed_share:.1%})"))
    if cfg.max_regressed_items is not None:
        out.append(_check("regressed items", regressed <= cfg.max_regressed_items,
                          f"{regressed} items regressed (compare.max_regressed_items = {cfg.max_regressed_items})"))
    if general is not None:
        rise, drop = general["perplexity_increase"], general["answer_drop"]
        out.append(_check("general perplexity", rise <= cfg.max_general_perplexity_increase,
                          f"general English perplexity {general['base']['perplexity']:.3f} -> "
                          f"{general['tuned']['perplexity']:.3f} ({rise:+.1%}; "
                          f"compare.max_general_perplexity_increase = {cfg.max_general_perplexity_increase:.1%})"))
        out.append(_check("general answers", drop <= cfg.max_general_answer_drop,
                          f"general instructions answered {general['base']['answered']:.1%} -> "
                          f"{general['tuned']['answered']:.1%} (compare.max_general_answer_drop = "
                          f"{cfg.max_general_answer_drop:.1%})"))
    return out


def _example(kind: str, record: dict, index: int, split: str, base: dict, tuned: dict) -> dict[str, Any]:
    out: dict[str, Any] = {"item": item_id(record, index, split)}
    if kind == "classify":
        out.update(text=record["text"][:160], label=record["label"], base=base["predicted"], tuned=tuned["predicted"])
    elif kind == "preference":
        out.update(prompt=tuned["prompt"][:160], chosen=tuned["chosen"][:160], rejected=tuned["rejected"][:160],
                   base_margin=round(base["margin"], 4), tuned_margin=round(tuned["margin"], 4))
    elif kind == "rated":
        out.update(prompt=tuned["prompt"][:160], completion=tuned["completion"][:160],
                   rating="desirable" if tuned["label"] else "undesirable",
                   base_logp=round(base["logp"], 4), tuned_logp=round(tuned["logp"], 4))
    elif kind == "chat":
        out.update(prompt=tuned["prompt"][:160], reference=tuned["reference"][:160], base=base["prediction"][:160],
                   tuned=tuned["prediction"][:160], base_score=round(base["score"], 4), tuned_score=round(tuned["score"], 4))
    else:
        out.update(text=record["text"][:160], base_loss=round(base["loss"], 4), tuned_loss=round(tuned["loss"], 4))
    return out


def _general(base: dict | None, tuned: dict | None) -> dict[str, Any] | None:
    if base is None or tuned is None:
        return None
    pairs = list(zip(base["items"], tuned["items"], strict=True))
    return {"base": {k: base[k] for k in ("perplexity", "bits_per_byte", "answered")},
            "tuned": {k: tuned[k] for k in ("perplexity", "bits_per_byte", "answered")},
            "perplexity_increase": tuned["perplexity"] / base["perplexity"] - 1.0,
            "answer_drop": base["answered"] - tuned["answered"],
            "regressed": [t | {"base": b["prediction"]} for b, t in pairs if b["correct"] and not t["correct"]],
            "improved": [t | {"base": b["prediction"]} for b, t in pairs if t["correct"] and not b["correct"]]}


def gate(base_ref: str, tuned_ref: str, cfg: CompareConfig, ws: Workspace | None = None,
         registry: Registry | None = None, progress=None) -> dict[str, Any]:
    """Score BASE and TUNED on cfg.data's held-out split (and the general check) and give the verdict."""
    cfg = CompareConfig.given(cfg, "llmkit.eval.gate.gate")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    if not cfg.data:
        raise UserError("compare.data is not set: the gate needs --data NAME (the dataset TUNED was tuned for)")
    base, tuned = resolve_model(base_ref, registry), resolve_model(tuned_ref, registry)
    if base.path == tuned.path:
        raise UserError(f"BASE and TUNED are the same model ({tuned.ref}); compare the tuned model with its base")
    ds = open_dataset(registry, cfg.data)
    expected = "classification" if ds.kind == "classify" else "causal-lm"
    for model in (base, tuned):
        refuse_export(model)  # before minutes of scoring the other one
        if model_task(model) != expected:
            raise UserError(f"{model.ref} is a {model_task(model)} model and {ds.ref} is a {ds.kind} dataset; "
                            f"the gate needs two {expected} models for it")
    split, records = held_out_split(ds, cfg.split)
    kind = ds.kind
    unscored = 0
    if kind == "preference":
        held_out = len(records)
        records, kind = _preference_records(records, ds.ref, split)
        unscored = held_out - len(records)
    records = records[: cfg.max_items or None]
    if kind == "rated" and len({bool(r["label"]) for r in records}) < 2:
        raise UserError(f"{ds.ref} {split}: the rated answers to score are all "
                        f"{'desirable' if records[0]['label'] else 'undesirable'}; the gate ranks desirable answers "
                        "against undesirable ones: raise compare.max_items or pass --split with both ratings")
    sides = [score(model, kind, records, cfg, progress) for model in (base, tuned)]
    figures = [task_figure(kind, side["items"]) for side in sides]
    improvement = (figures[0] - figures[1]) / figures[0] if kind == "lm" else figures[1] - figures[0]
    task = {"metric": TASK_METRIC[kind], "base": figures[0], "tuned": figures[1], "improvement": improvement,
            "interval": improvement_interval(kind, sides[0]["items"], sides[1]["items"])}
    worse, better = flips(kind, sides[0]["items"], sides[1]["items"], cfg)
    general = _general(sides[0]["general"], sides[1]["general"])
    found = checks(kind, task, len(worse), len(records), general, cfg)

    def examples(indices: list[int]) -> list[dict]:
        return [_example(kind, records[i], i, split, sides[0]["items"][i], sides[1]["items"][i]) for i in indices[: cfg.examples]]

    result = {"base": base.ref, "tuned": tuned.ref, "dataset": ds.ref, "split": split, "kind": kind,
              "items": len(records), "task": task, "general": general,
              "flipped": {"regressed": len(worse), "improved": len(better),
                          "regressed_items": [item_id(records[i], i, split) for i in worse],
                          "improved_items": [item_id(records[i], i, split) for i in better],
                          "regressed_examples": examples(worse), "improved_examples": examples(better)},
              "checks": found, "passed": all(c["passed"] for c in found),
              "reasons": [c["message"] for c in found if not c["passed"]], "config": cfg.model_dump()}
    result["verdict"] = "pass" if result["passed"] else "fail"
    result["warnings"] = sample_warnings(task, len(records)) + tokenizer_warnings(kind, sides)
    if unscored:  # a dataset from feedback mixes pairs and lone ratings: the verdict rests on the pairs alone
        result["warnings"].append(f"{unscored} rated answers of {ds.ref} {split} are not scored: the gate ranks the "
                                  "split's pairs when it has any, and rated answers (rated_answer_auc) only in a split "
                                  "without pairs")
    result["id"] = _register(result, base, tuned, ds, ws, registry)
    return result


def _preference_records(records: list[dict], ref: str, split: str) -> tuple[list[dict], str]:
    """Pairs when the split has any (its rated answers are not items then), else its rated answers (KTO data)."""
    pairs = [r for r in records if "chosen" in r]
    if pairs:
        return pairs, "preference"
    rated = [r for r in records if "completion" in r]
    if len({bool(r["label"]) for r in rated}) < 2:
        rating = "desirable" if rated and rated[0]["label"] else "undesirable"
        raise UserError(f"{ref} {split}: its {len(rated)} rated answers are all {rating} and it has no pairs; the gate "
                        "ranks chosen over rejected answers, or desirable over undesirable ones: pass --split with both "
                        "or a dataset with pairs")
    return rated, "rated"


def _register(result: dict[str, Any], base: Model, tuned: Model, ds, ws: Workspace, registry: Registry) -> str:
    """compare.json and a report (report.json, report.html, like every eval's) in a folder of its own, then an eval
    record (kind compare) under TUNED."""
    general = result["general"] or {}
    metrics = {"passed": int(result["passed"]), "task_base": result["task"]["base"], "task_tuned": result["task"]["tuned"],
               "task_improvement": result["task"]["improvement"], "items": result["items"],
               "regressed": result["flipped"]["regressed"], "improved": result["flipped"]["improved"]}
    if general:
        metrics.update(general_perplexity_base=general["base"]["perplexity"], general_perplexity_tuned=general["tuned"]["perplexity"],
                       general_answered_base=general["base"]["answered"], general_answered_tuned=general["tuned"]["answered"])
    flipped = result["flipped"]
    # What decided the verdict, as the terminal shows it: each check against its threshold, the items that flipped
    # and the general instructions lost or gained (the page had the bare figures, the task metric unnamed).
    tables = {"Checks (thresholds from the compare config)": [
        {"check": c["check"], "passed": "yes" if c["passed"] else "NO", "what": c["message"]} for c in result["checks"]],
        f"Items that went better -> worse ({flipped['regressed']})": flipped["regressed_examples"],
        f"Items that went worse -> better ({flipped['improved']})": flipped["improved_examples"]}
    if general:
        tables["General instructions lost"] = general["regressed"]
        tables["General instructions gained"] = general["improved"]
    report = Report(f"{tuned.ref} against {base.ref}", "compare",
                    {"verdict": result["verdict"], "task metric": result["task"]["metric"], **metrics,
                     "reasons": "; ".join(result["reasons"]) or "-", "warnings": "; ".join(result["warnings"]) or "-"},
                    ds.ref, result["split"], result["config"], tables=tables)
    folder = ws.folder("evals", f"{tuned.name.replace('/', '_')}-compare-{uuid.uuid4().hex[:6]}")
    with atomic_dir(folder) as tmp:
        (tmp / "compare.json").write_text(json.dumps(result, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
        report.write(tmp)
    parents = [(ds.id, "on_dataset")] + ([(tuned.id, "gated")] if tuned.id else []) + ([(base.id, "gate_base")] if base.id else [])
    params = {"base": base.ref, "base_id": base.id, "tuned": tuned.ref, "tuned_id": tuned.id, "dataset": ds.ref,
              "dataset_id": ds.id, "split": result["split"], "verdict": result["verdict"], "reasons": result["reasons"],
              "config": result["config"]}
    report.id = registry.add("eval", tuned.name, kind="compare", path=folder, params=params, metrics=metrics,
                             parents=parents).id
    rewrite_report(report, folder)  # with its eval id (the page said "eval -")
    return report.id

