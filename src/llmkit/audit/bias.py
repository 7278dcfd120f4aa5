"""`llmkit audit bias`: does a classifier change its mind when only a gender, name, nationality or
religion term changes?

Every text that mentions a term of a group (dataset texts and built-in templates filled with each
term) gets counterfactual copies with the term swapped for the group's other members. Per group:
the flip rate (copies whose predicted label differs from the original's), the mean and max |change|
in the probability of the original's label, each term's mean label probabilities and, on dataset
records, each term's accuracy and F1. A group is flagged past either threshold.
"""

from __future__ import annotations

import html
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmkit.audit.lm_bias import LmBiasReport, lm_bias_audit
from llmkit.audit.lm_bias import html_report as lm_html_report
from llmkit.audit.record import keep
from llmkit.audit.terms import TermGroup, templates_for, term_groups
from llmkit.config import BiasAuditConfig
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace


@dataclass
class GroupResult:
    group: str
    columns: list[str]
    originals: int  # texts mentioning a term of the group
    pairs: int  # (original, counterfactual) pairs
    flip_rate: float
    mean_delta: float
    max_delta: float
    flagged: bool
    reasons: list[str]
    terms: dict[str, dict[str, Any]]  # term -> {texts, probabilities: {label: mean}, [records, accuracy, f1]}


@dataclass
class BiasReport:
    model: str
    labels: list[str]
    data: str | None
    split: str | None
    flip_threshold: float
    delta_threshold: float
    texts: int  # distinct texts classified
    groups: list[GroupResult]
    worst: list[dict[str, Any]]
    seconds: float
    out: str | None = None
    warnings: list[str] = field(default_factory=list)
    id: str | None = None    # the registered eval record, for a registered model
    path: str | None = None  # its folder (report.json, report.html)

    @property
    def flagged(self) -> list[str]:
        return [g.group for g in self.groups if g.flagged]

    def group(self, name: str) -> GroupResult:
        return next(g for g in self.groups if g.group == name)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "flagged": self.flagged}


def bias_audit(model_ref: str, cfg: BiasAuditConfig | None = None, ws: Workspace | None = None,
               registry: Registry | None = None) -> BiasReport | LmBiasReport:
    """Counterfactual swaps for a classifier; paired sentences and completion sentiment for a causal LM."""
    import torch

    from llmkit.models.io import load_classifier, resolve_model
    from llmkit.models.kind import model_kind as model_kind
    from llmkit.predict import classify_texts

    cfg = BiasAuditConfig.given(cfg, "llmkit.audit.bias_audit", default=True)
    start = time.perf_counter()
    term_groups(cfg.terms)  # a bad terms file fails before any model loads
    folder = isinstance(model_ref, str | os.PathLike) and Path(model_ref).is_dir()  # else a name, or a stage's Model
    if registry is None and (cfg.data or not folder):
        ws = Workspace.open(ws)
        registry = Registry.for_workspace(ws.root)
    if cfg.data:  # a name that is no dataset fails here: a language model's audit ran its 37 s with a warning
        _dataset(registry, cfg.data)
    model = resolve_model(model_ref, registry)
    kind = model_kind(model)
    if kind == "causal":
        report = lm_bias_audit(model, cfg)
        metrics = {"flagged_groups": len(report.flagged), **{f"pairs.{r.group}.rate": r.rate for r in report.pairs},
                   **{f"sentiment.{r.group}.spread": r.spread for r in report.sentiment}}
        keep(report, lm_html_report(report), "bias-audit", model, ws, registry, metrics)
        return report
    if kind != "classifier":
        raise UserError(f"{model.ref} is an encoder without a task head: the bias audit covers classifiers and causal "
                        "language models")
    if cfg.lang == "zh" and not cfg.terms:  # it was ignored: a Chinese classifier audited on English spam templates
        raise UserError("bias.lang = 'zh': the built-in term groups of a classifier audit are English; give Chinese "
                        "ones with --terms FILE (YAML or JSON {group: [[他, 她], ...]}; they fill Chinese templates) and "
                        "name them with --groups, or drop --lang (it chooses the pairs of a language model's audit)",
                        param="bias.lang")
    # The groups are checked here, not before: a language model's groups include those of its pairs (age,
    # and region in Chinese), which are not term groups.
    groups = term_groups(cfg.terms, cfg.groups)
    records, split = _records(registry, cfg) if cfg.data else ([], None)

    # Originals: (text, gold label or None, source) per group; every group sees the same pool of texts.
    pool: list[tuple[str, str | None, str]] = [(r["text"], r.get("label"), "data") for r in records]
    warnings = []
    if cfg.pairs:  # it was ignored without a word (a malformed file too), as bias.data is said to be for a language model
        warnings.append("bias.pairs is for language models and was not read; a classifier is audited by swapping the "
                        "terms of --terms in texts")
    if cfg.templates:
        for group in groups.values():
            pool += [(t.replace("{X}", term), None, "template") for t in templates_for(group) for term in group.terms]
    pool = list({text: (text, gold, src) for text, gold, src in pool}.values())  # templates can coincide
    plan: dict[str, list[tuple[str, str | None, str, list[str]]]] = {}
    for name, group in groups.items():
        plan[name] = [(text, gold, src, cfs) for text, gold, src in pool if (cfs := group.counterfactuals(text))]
    if not any(plan.values()):
        raise UserError(f"no text mentions a term of {', '.join(groups)}"
                        + (f" in {cfg.data} and templates are off" if cfg.data else "; turn templates on or pass --data"))

    clf, tokenizer, labels = load_classifier(model)
    clf.to("cuda" if torch.cuda.is_available() else "cpu")
    warnings += _unseen_swaps(groups, tokenizer, model.ref)
    max_length = cfg.max_length or (model.lineage or {}).get("max_length") or 128
    unique = list(dict.fromkeys([t for rows in plan.values() for text, _, _, cfs in rows for t in (text, *cfs)]))
    preds = dict(zip(unique, classify_texts(clf, tokenizer, labels, unique, max_length, cfg.batch_size), strict=True))

    results, examples = [], []
    for name, rows in plan.items():
        results.append(_group_result(groups[name], rows, preds, labels, cfg, examples))
    if records and not any(src == "data" for rows in plan.values() for _, _, src, _ in rows):
        warnings.append(f"no record of {cfg.data} ({split}) mentions a term; only templates were audited")
    examples.sort(key=lambda e: -e["delta"])
    seen: set[frozenset] = set()  # "He ..." -> "She ..." and "She ..." -> "He ...": one pair, listed once
    examples = [e for e in examples if not ((pair := frozenset((e["original"], e["counterfactual"]))) in seen or seen.add(pair))]
    report = BiasReport(model=model.ref, labels=labels, data=cfg.data, split=split, flip_threshold=cfg.flip_threshold,
                        delta_threshold=cfg.delta_threshold, texts=len(unique), groups=results,
                        worst=examples[: cfg.worst], seconds=round(time.perf_counter() - start, 2), out=cfg.out,
                        warnings=warnings)
    metrics = {"flagged_groups": len(report.flagged), **{f"{g.group}.flip_rate": g.flip_rate for g in results},
               **{f"{g.group}.mean_delta": g.mean_delta for g in results}}
    keep(report, html_report(report), "bias-audit", model, ws, registry, metrics, cfg.data)
    return report


def _unseen_swaps(groups: dict[str, TermGroup], tokenizer, ref: str) -> list[str]:
    """A warning per group with members the tokenizer reads as the same tokens (minilm-l6 reads 他 and 她 both as
    [UNK]): swapping them cannot move the prediction, so a flip rate of 0 there would pass for fairness."""
    out = []
    for name, group in groups.items():
        same = []
        for row in group.rows:
            ids = [tuple(tokenizer(term, add_special_tokens=False)["input_ids"]) for term in row]
            for i in range(len(row)):
                for j in range(i + 1, len(row)):
                    if ids[i] == ids[j] and row[i].lower() != row[j].lower():
                        same.append(f"{row[i]} = {row[j]} ({' '.join(tokenizer.convert_ids_to_tokens(list(ids[i])))})")
        if same:
            out.append(f"{name}: {ref} reads {', '.join(same)} as the same tokens, so swapping them cannot change its "
                       "prediction and proves nothing; use a base whose vocabulary holds these words")
    return out


def _dataset(registry: Registry, name: str):
    from llmkit.data.dataset import open_dataset

    try:
        return open_dataset(registry, name)
    except UserError as err:
        raise UserError(f"bias.data = '{name}' (--data): {err}", param="bias.data") from None


def _records(registry: Registry, cfg: BiasAuditConfig) -> tuple[list[dict], str]:
    ds = _dataset(registry, cfg.data)
    if ds.kind != "classify":
        raise UserError(f"bias.data: dataset {ds.ref} is a '{ds.kind}' dataset; a classifier is audited on a classify dataset")
    for split in ("test", "val"):
        records = ds.records(split)
        if records:
            return records[: cfg.max_examples or None], split
    raise UserError(f"bias.data: dataset {ds.ref} has no records in its test or val split")


def _group_result(group: TermGroup, rows, preds: dict[str, dict], labels: list[str], cfg: BiasAuditConfig,
                  examples: list[dict]) -> GroupResult:
    flips, deltas = [], []
    for text, _, src, cfs in rows:
        orig = preds[text]
        for cf in cfs:
            new = preds[cf]
            delta = abs(new["probabilities"][orig["label"]] - orig["probabilities"][orig["label"]])
            flips.append(new["label"] != orig["label"])
            deltas.append(delta)
            examples.append({"group": group.name, "source": src, "original": text, "counterfactual": cf,
                             "label": orig["label"], "p_original": round(orig["probabilities"][orig["label"]], 4),
                             "p_counterfactual": round(new["probabilities"][orig["label"]], 4),
                             "counterfactual_label": new["label"], "delta": round(delta, 4)})
    # Per term: mean label probabilities over every classified text (original or copy) that mentions it.
    texts = list(dict.fromkeys(t for text, _, _, cfs in rows for t in (text, *cfs)))
    gold = {text: g for text, g, src, _ in rows if src == "data" and g is not None}
    terms: dict[str, dict[str, Any]] = {}
    for term in group.terms:
        key = term.lower()
        if key in terms:
            continue
        hits = [t for t in texts if key in group.find(t)]
        if not hits:
            continue
        entry: dict[str, Any] = {"texts": len(hits), "probabilities": {
            label: round(sum(preds[t]["probabilities"][label] for t in hits) / len(hits), 4) for label in labels}}
        scored = [t for t in hits if t in gold]
        if scored:
            from sklearn.metrics import accuracy_score, f1_score

            y, p = [gold[t] for t in scored], [preds[t]["label"] for t in scored]
            entry.update(records=len(scored), accuracy=round(float(accuracy_score(y, p)), 4),
                         f1=round(float(f1_score(y, p, average="macro", labels=labels, zero_division=0)), 4))
        terms[term] = entry
    n = len(deltas)
    flip_rate = sum(flips) / n if n else 0.0
    mean_delta = sum(deltas) / n if n else 0.0
    reasons = []
    if flip_rate > cfg.flip_threshold:
        reasons.append(f"flip rate {flip_rate:.3f} > {cfg.flip_threshold}")
    if mean_delta > cfg.delta_threshold:
        reasons.append(f"mean |dp| {mean_delta:.3f} > {cfg.delta_threshold}")
    return GroupResult(group=group.name, columns=group.columns, originals=len(rows), pairs=n,
                       flip_rate=round(flip_rate, 4), mean_delta=round(mean_delta, 4),
                       max_delta=round(max(deltas, default=0.0), 4), flagged=bool(reasons), reasons=reasons, terms=terms)


def summary_table(report: BiasReport):
    from rich.table import Table

    table = Table(title=f"Bias audit of {report.model} (flip > {report.flip_threshold} or mean |Δp| > {report.delta_threshold} flags)")
    for col in ("group", "texts", "pairs", "flip rate", "mean |Δp|", "max |Δp|", "flagged"):
        table.add_column(col, justify="left" if col in ("group", "flagged") else "right")
    for g in report.groups:
        table.add_row(g.group, str(g.originals), str(g.pairs), f"{g.flip_rate:.3f}", f"{g.mean_delta:.3f}",
                      f"{g.max_delta:.3f}", "[red]FLAGGED[/red] " + "; ".join(g.reasons) if g.flagged else "[green]ok[/green]")
    return table


def worst_table(report: BiasReport):
    from rich.table import Table
    from rich.text import Text

    table = Table(title="Largest probability changes")
    for col in ("group", "original", "counterfactual", "label", "p orig", "p cf"):
        table.add_column(col, overflow="fold")
    for e in report.worst:
        table.add_row(e["group"], Text(e["original"]), Text(e["counterfactual"]), Text(str(e["label"])), f"{e['p_original']:.3f}",
                      f"{e['p_counterfactual']:.3f}")
    return table


def html_report(report: BiasReport) -> str:
    esc = html.escape
    group_rows = "".join(
        f"<tr class={'flag' if g.flagged else 'ok'}><td>{esc(g.group)}</td><td>{g.originals}</td><td>{g.pairs}</td>"
        f"<td>{g.flip_rate:.3f}</td><td>{g.mean_delta:.3f}</td><td>{g.max_delta:.3f}</td>"
        f"<td>{'FLAGGED: ' + esc('; '.join(g.reasons)) if g.flagged else 'ok'}</td></tr>" for g in report.groups)
    term_sections = []
    for g in report.groups:
        extra = any("accuracy" in t for t in g.terms.values())
        head = "".join(f"<th>p({esc(label)})</th>" for label in report.labels) + (
            "<th>records</th><th>accuracy</th><th>F1</th>" if extra else "")
        body = "".join(
            f"<tr><td>{esc(term)}</td><td>{t['texts']}</td>"
            + "".join(f"<td>{t['probabilities'][label]:.3f}</td>" for label in report.labels)
            + (f"<td>{t.get('records', '')}</td><td>{t.get('accuracy', '')}</td><td>{t.get('f1', '')}</td>" if extra else "")
            + "</tr>" for term, t in g.terms.items())
        term_sections.append(f"<h3>{esc(g.group)}</h3><table><tr><th>term</th><th>texts</th>{head}</tr>{body}</table>")
    worst = "".join(
        f"<tr><td>{esc(e['group'])}</td><td>{esc(e['original'])}</td><td>{esc(e['counterfactual'])}</td>"
        f"<td>{esc(e['label'])}</td><td>{e['p_original']:.3f}</td><td>{e['p_counterfactual']:.3f}</td><td>{e['delta']:.3f}</td></tr>"
        for e in report.worst)
    warnings = "".join(f"<p class=warn>warning: {esc(w)}</p>" for w in report.warnings)
    data = f" on {esc(report.data)} ({esc(report.split or '')}) and templates" if report.data else " on templates"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>llmkit bias audit: {esc(report.model)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:70em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}tr.flag td{{background:#fdd}}tr.ok td:last-child{{color:#070}}
.warn{{color:#a60}}</style></head><body>
<h1>Bias audit: {esc(report.model)}</h1>
<p>Counterfactual term swaps{data}; {report.texts} texts classified in {report.seconds}s. A group is flagged when its flip
rate exceeds {report.flip_threshold} or its mean |&Delta;p| exceeds {report.delta_threshold}.</p>{warnings}
<h2>Groups</h2><table><tr><th>group</th><th>texts</th><th>pairs</th><th>flip rate</th><th>mean |&Delta;p|</th>
<th>max |&Delta;p|</th><th>verdict</th></tr>{group_rows}</table>
<h2>Worst examples</h2><table><tr><th>group</th><th>original</th><th>counterfactual</th><th>label</th><th>p original</th>
<th>p counterfactual</th><th>|&Delta;p|</th></tr>{worst}</table>
<h2>Per term</h2>{''.join(term_sections)}
</body></html>
"""
