"""`llmkit data prepare | from-feedback | report | show`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from llmkit.cli.common import Ctx, console, err_console
from llmkit.cli.options import configured
from llmkit.errors import UserError

app = typer.Typer(help="Prepare, inspect and version datasets.", no_args_is_help=True,
                  epilog="Example: llmkit data prepare input.txt --name shakespeare --task lm")


@app.command(epilog="Example: llmkit data prepare ../shared/data/tinyshakespeare/input.txt --name shakespeare --task lm --tokenizer char")
@configured("data", arguments=("inputs",), repeat=("include", "exclude"))
def prepare(ctx: Ctx, cfg) -> None:
    """Ingest, clean, dedupe, redact PII, split, tokenize, and register a dataset version."""
    from llmkit.data.discover import describe_skipped
    from llmkit.data.pipeline import prepare as run_prepare

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed} records"),
                  TimeElapsedColumn(), console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        ds = run_prepare(cfg, ctx.ws, ctx.registry, progress=progress)
    m = ds.manifest
    result = {"id": ds.id, "name": ds.name, "version": ds.version, "ref": ds.ref, "path": str(ds.path),
              "existed": ds.existed, "counts": m["counts"], "splits": m["splits"], "pii": m["pii"],
              "tokenizer": m["tokenizer"], "skipped_files": m.get("skipped_files", [])}
    skipped = [(s["file"], s["reason"]) for s in result["skipped_files"]]

    def human() -> None:
        if ds.existed:
            console.print(f"dataset [bold]{ds.ref}[/bold] already exists with the same content and options: {ds.path}")
            return
        c = m["counts"]
        console.print(f"dataset [bold]{ds.ref}[/bold] ({m['task']}) at {ds.path}")
        if not cfg.name:
            console.print(f"  named '{ds.name}' after its input; --name NAME chooses", markup=False, highlight=False)
        if skipped:
            console.print(f"  files skipped: {describe_skipped(skipped)}; choose with --include/--exclude GLOB",
                          markup=False, highlight=False)
        # read counts the bad rows too: "3 read, 3 kept, ..., 1 bad" did not add up
        console.print(f"  records: {c['ingested'] + c['bad']} read, {c['kept']} kept; removed {c['duplicates_exact']} exact and "
                      f"{c['duplicates_near']} near duplicates, {c['too_short']} too short, {c['too_long']} too long, "
                      f"{c['pii_dropped']} for PII, {c['bad']} bad")
        if m.get("bad_examples"):  # what --skip-bad skipped: the count alone sent people to read every row
            console.print(f"  first bad record: {m['bad_examples'][0]}", markup=False, highlight=False)
        for label, used in (m.get("label_spellings") or {}).items():  # `Spam `, `SPAM` and `spam` are one class
            console.print(f"  label '{label}' also written " + ", ".join(f"'{k}' ({n})" for k, n in used.items() if k != label),
                          markup=False, highlight=False)
        conflicts = m.get("label_conflicts") or {}
        if conflicts.get("count"):  # dropped as duplicates: said, since the labels disagreed
            console.print(f"  {conflicts['count']} repeated text(s) with another label dropped; the first: "
                          f"{conflicts['examples'][0]}", markup=False, highlight=False)
        if m.get("preference"):
            console.print(f"  {_preference_line(m['preference'])}", highlight=False)
        if m["pii"]:
            console.print("  PII found: " + ", ".join(f"{k} {v}" for k, v in sorted(m["pii"].items())))
        for split, s in m["splits"].items():
            console.print(f"  {split:5s} {s['records']:8d} records {s['tokens']:10d} tokens")
        empty = [split for split in ("val", "test") if not m["splits"].get(split, {}).get("records")]
        if empty and cfg.splits.val > 0:  # found only when training stopped on it, blaming --context
            console.print(f"  [yellow]note:[/yellow] {' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty "
                          f"({c['kept']} record{'' if c['kept'] == 1 else 's'} kept): training evaluates on val; give more records, or "
                          + ("for one large file --doc-split blank-line or line" if m["task"] == "lm"
                             else "a larger share with --splits-val 0.2"), highlight=False)
        train_labels = (m.get("labels") or {}).get("train") or {}
        if m["task"] == "classify" and len(train_labels) == 1:  # found only at `train classify`, after the user moved on
            console.print(f"  [yellow]note:[/yellow] every train record has the label '{next(iter(train_labels))}': a "
                          "classifier needs at least 2 (--label-field NAME chooses the field the labels come from)",
                          highlight=False)
        tokenizer = m["tokenizer"]  # its spec as asked (char, bpe:8000, a path); a char one is a wordlevel model inside
        console.print(f"  tokenizer: {tokenizer.get('spec') or tokenizer['kind']}, vocabulary {tokenizer['vocab_size']:,}",
                      markup=False, highlight=False)
        console.print(f"next: llmkit data report {ds.name}")

    ctx.emit(result, human)


@app.command("from-feedback", epilog="Example: llmkit data from-feedback --name tiny-feedback --model tiny-lm --since 2025-01-31, "
             "then llmkit train sft --base tiny-lm --data tiny-feedback")
@configured("from-feedback")
def from_feedback(ctx: Ctx, cfg) -> None:
    """Turn rated and corrected responses of the server into a chat dataset for 'llmkit train sft' (or a preference one).

    Per response the latest feedback wins; a correction becomes the answer (even on a thumbs-down),
    a rating >= --min-rating keeps the answer as it was; the rest is skipped and counted.
    With --task preference: a correction is chosen over the answer it corrects, a thumbs-up over a
    thumbs-down answer to the same prompt, and lone ratings become KTO records, for 'llmkit train dpo'.
    """
    from llmkit.data.feedback import dataset_from_feedback
    from llmkit.data.feedback_rows import describe_skipped

    ctx.require_workspace()  # no workspace holds no feedback: said, without making one
    ds = dataset_from_feedback(cfg, ctx.ws, ctx.registry)
    m, fb = ds.manifest, ds.manifest["feedback"]
    preference = m["task"] == "preference"
    result = {"id": ds.id, "name": ds.name, "version": ds.version, "ref": ds.ref, "path": str(ds.path),
              "existed": ds.existed, "task": m["task"], "used": fb["used"], "skipped": fb["skipped"],
              "feedback_rows": fb["feedback_rows"], "request_logs": fb["request_logs"], "models": fb["models"],
              "counts": m["counts"], "splits": m["splits"], "tokenizer": m["tokenizer"]}
    if preference:
        result["preference"] = m["preference"]  # what prepare kept: pairs and KTO records per split

    def human() -> None:
        if ds.existed:
            console.print(f"dataset [bold]{ds.ref}[/bold] already exists with the same feedback and options: {ds.path}")
        else:
            console.print(f"dataset [bold]{ds.ref}[/bold] ({m['task']}) at {ds.path}")
        if not cfg.name:
            console.print(f"  named '{ds.name}' after its input; --name NAME chooses", markup=False, highlight=False)
        used = fb["used"]
        if preference:
            made = (f"pairs from corrections {used['pairs_from_corrections']}, from ratings {used['pairs_from_ratings']}; "
                    f"lone ratings as KTO records {used['unpaired_true']} up, {used['unpaired_false']} down")
        else:
            made = f"{used['corrected']} corrected, {used['approved']} approved"
        console.print(f"  from {fb['feedback_rows']} feedback rows: {made}; skipped: {describe_skipped(fb['skipped'])}",
                      highlight=False)
        dupes = m["counts"]["duplicates_exact"] + m["counts"]["duplicates_near"]
        what = "records" if preference else "conversations"
        console.print(f"  {what}: {m['splits']['train']['records']} train, {m['splits']['val']['records']} val"
                      f"{f' ({dupes} duplicates removed)' if dupes else ''}")
        if preference:
            console.print(f"  {_preference_line(m['preference'])}", highlight=False)
        if fb["models"]:
            console.print(f"  lineage: from model {', '.join(fb['models'])} (feedback)")
        trainer = ("kto" if not m["preference"]["pairs"] else "dpo") if preference else "sft"
        if not m["splits"]["val"]["records"] and not m["splits"]["test"]["records"]:
            held_out = "to measure held-out reward accuracy on" if preference else "which 'llmkit train sft' evaluates on"
            more = "" if m["splits"]["train"]["records"] <= 1 else " or raise --val"  # one record cannot be split
            console.print(f"  note: no val {what} {held_out}; collect more feedback{more}")
        console.print(f"next: llmkit train {trainer} --base {_trainable(ctx, fb['models'], cfg.model)} --data {ds.name}")

    ctx.emit(result, human)


@app.command(epilog="Example: llmkit data report shakespeare --json")
@configured(None)
def report(
    ctx: Ctx,
    dataset: Annotated[str, typer.Argument(help="Dataset name, name:vN or id.")],
) -> None:
    """Statistics and plots of a dataset version."""
    from llmkit.data.discover import describe_skipped
    from llmkit.data.report import summary

    path, manifest = _load(ctx, dataset)
    result = summary(manifest, path)

    def human() -> None:
        table = Table(title=f"{manifest['name']} ({manifest['task']})")
        for col in ("split", "records", "documents", "tokens", "chars"):
            table.add_column(col, justify="right")
        for split, s in manifest["splits"].items():
            table.add_row(split, str(s["records"]), str(s["documents"]), str(s["tokens"]), str(s["chars"]))
        console.print(table)
        console.print(f"records: {result['records']} kept, tokens: {result['tokens']}, "
                      f"duplicates removed: {result['duplicates_removed']}")
        console.print("counts: " + ", ".join(f"{k} {v}" for k, v in manifest["counts"].items()))
        console.print("PII: " + (", ".join(f"{k} {v}" for k, v in sorted(manifest["pii"].items())) or "none found"))
        if manifest.get("preference"):
            console.print(_preference_line(manifest["preference"]), highlight=False)
        if manifest.get("labels"):
            for split, labels in manifest["labels"].items():
                console.print(f"labels {split}: " + ", ".join(f"{k} {v}" for k, v in sorted(labels.items())))
        console.print("top tokens: " + " ".join(f"{tok!r}:{n}" for tok, n in manifest["top_tokens"][:10]))
        if result["skipped_files"]:
            skipped = [(s["file"], s["reason"]) for s in result["skipped_files"]]
            console.print(f"files skipped: {describe_skipped(skipped)}", markup=False, highlight=False)
        for plot in result["plots"]:
            console.print(f"plot: {plot}")

    ctx.emit(result, human)


@app.command(epilog="Example: llmkit data show shakespeare --split val --n 3")
@configured(None)
def show(
    ctx: Ctx,
    dataset: Annotated[str, typer.Argument(help="Dataset name, name:vN or id.")],
    split: Annotated[str, typer.Option(help="Split to show: train | val | test.")] = "train",
    n: Annotated[int, typer.Option(help="How many records (with --json: all unless given).", min=1)] = 5,
) -> None:
    """Records of a split after cleaning."""
    path, manifest = _load(ctx, dataset)
    file = path / "records" / f"{split}.jsonl"  # streamed: a split can be large and --n small
    if not file.exists():
        raise UserError(f"split '{split}' does not exist; splits: {', '.join(manifest['splits'])}")
    limit = None if ctx.json and not _given("--n") else n
    records = []
    with open(file, encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(records) >= limit:
                break
            records.append(json.loads(line))

    def human() -> None:
        for rec in records:
            console.rule(rec.get("source") or "", characters="-")
            if "messages" in rec or "prompt" in rec:
                for m in rec.get("messages") or rec["prompt"]:
                    console.print(f"[bold]{m['role']}:[/bold]", end=" ")
                    console.print(m["content"], markup=False, highlight=False)
                for key in ("chosen", "rejected", "completion"):  # preference answers
                    if key in rec:
                        console.print(f"[bold]{key}:[/bold]", end=" ")
                        console.print(rec[key], markup=False, highlight=False)
            else:
                console.print(rec["text"], markup=False, highlight=False)
            if "label" in rec:
                console.print(f"[bold]label:[/bold] {rec['label']}")

    ctx.emit(records, human)


def _preference_line(p: dict) -> str:
    skipped = ", ".join(f"{reason} {n}" for reason, n in p["skipped"].items()) or "none"
    return (f"preference: {p['pairs']} pairs, {p['unpaired_true']} unpaired true, {p['unpaired_false']} unpaired false; "
            f"skipped: {skipped}")


def _given(flag: str) -> bool:
    import sys

    return any(a == flag or a.startswith(flag + "=") for a in sys.argv)


def _trainable(ctx: Ctx, models: list[str], asked: str | None) -> str:
    """The model to name in from-feedback's next step: the one that answered (a built-in is not in the registry's
    lineage: the --model asked for), and for a GGUF or ONNX export the model it was exported from (training refuses
    an export)."""
    from llmkit.models.io import resolve_model

    base = models[0] if len(models) == 1 else asked
    if not base:
        return "MODEL"
    try:
        model = resolve_model(base, ctx.registry)
    except UserError:
        return base
    if (model.lineage or {}).get("format") in ("gguf", "onnx"):
        return ((model.lineage or {}).get("parent_model") or {}).get("ref") or base
    return base


def _load(ctx: Ctx, ref: str) -> tuple[Path, dict]:
    from llmkit.data.dataset import open_dataset

    ctx.require_workspace()  # reading a dataset from a mistyped --workspace made an empty workspace there
    ds = open_dataset(ctx.registry, ref)
    return ds.path, ds.manifest
