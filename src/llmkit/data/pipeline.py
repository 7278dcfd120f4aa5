"""`llmkit data prepare`: raw files in, one registered dataset version out.

ingest -> clean -> length filters -> PII -> dedupe (exact, near) -> split -> records/<split>.jsonl
then the tokenizer (trained on train only), token shards for `lm`, plots and manifest.json; all
inside a temporary folder renamed into place, and registered last. The same inputs and options
hash the same, so running twice finds the existing version instead of making a new one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.config import DataConfig
from llmkit.data.clean import chunk_document, clean_text
from llmkit.data.dedupe import NearDuplicateIndex, exact_key
from llmkit.data.ingest import IngestStats, expand_inputs, iter_records
from llmkit.data.pii import count_by_type, find_pii, redact
from llmkit.data.report import LENGTH_BINS, write_plots
from llmkit.data.shards import write_shard
from llmkit.data.splits import SPLITS, assign_split, stratified_split
from llmkit.data.tokenizer import build_tokenizer, tokenizer_kind
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace, atomic_dir

# Enough text to learn a BPE vocabulary well; beyond it training time grows with no gain.
TOKENIZER_TRAIN_CHARS = 20_000_000


@dataclass
class DatasetVersion:
    id: str
    name: str
    version: int
    path: Path
    manifest: dict[str, Any]
    existed: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}"


@dataclass
class _Counts:
    ingested: int = 0
    bad: int = 0
    too_short: int = 0
    too_long: int = 0
    pii_dropped: int = 0
    duplicates_exact: int = 0
    duplicates_near: int = 0
    kept: int = 0
    pii: Counter = field(default_factory=Counter)
    labels: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in SPLITS})
    records: Counter = field(default_factory=Counter)
    chars: Counter = field(default_factory=Counter)
    length_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(LENGTH_BINS) - 1, dtype=np.int64))


def prepare(cfg: DataConfig, ws: Workspace | None = None, registry: Registry | None = None, progress=None) -> DatasetVersion:
    ws = ws or Workspace.open()
    registry = registry or Registry.for_workspace(ws.root)
    if not cfg.inputs:
        raise UserError("data.inputs is empty: give at least one file, folder or glob")
    files = expand_inputs(cfg.inputs)
    name = cfg.name or _default_name(files[0])
    source_hash = _source_hash(files, cfg)
    existing = registry.find_by_hash("dataset", source_hash, name)
    if existing is not None and existing.path and Path(existing.path).exists():
        manifest = json.loads((Path(existing.path) / "manifest.json").read_text())
        return DatasetVersion(existing.id, existing.name, existing.version, Path(existing.path), manifest, existed=True)

    target = ws.folder("datasets", f"{name}-{source_hash[:12]}")
    started = time.time()
    with atomic_dir(target) as tmp:
        counts, ingest_stats = _clean_and_split(cfg, tmp, progress)
        tokenizer = build_tokenizer(cfg.tokenizer, _sample_texts(tmp / "records" / "train.jsonl", cfg.task))
        tokenizer.save_pretrained(tmp / "tokenizer")
        vocab_size = len(tokenizer)
        tokens, top_ids = _tokenize_splits(cfg, tmp, tokenizer, vocab_size, progress)
        top_tokens = [[tokenizer.convert_ids_to_tokens(int(i)), int(c)] for i, c in top_ids]
        manifest = _manifest(cfg, name, files, source_hash, counts, ingest_stats, tokens, tokenizer, vocab_size, top_tokens)
        manifest["seconds"] = round(time.time() - started, 3)
        write_plots(tmp, counts.length_hist, {s: dict(c) for s, c in counts.labels.items()}, cfg.task)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    rec = registry.add(
        "dataset", name, kind=cfg.task, path=target, content_hash=source_hash,
        params=cfg.model_dump(), metrics={"records": counts.kept, "tokens": sum(t["tokens"] for t in tokens.values())},
    )
    manifest["version"] = rec.version
    return DatasetVersion(rec.id, rec.name, rec.version, target, manifest)


def _default_name(first: Path) -> str:
    stem = first.name.split(".")[0] if first.is_file() else first.name
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in stem) or "dataset"


def _source_hash(files: list[Path], cfg: DataConfig) -> str:
    h = hashlib.sha256()
    options = cfg.model_dump(exclude={"inputs", "name"})
    h.update(json.dumps(options, sort_keys=True).encode())
    for path in files:
        h.update(path.name.encode() + b"\x00")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _record_text(rec: dict[str, Any], task: str) -> str:
    if task == "chat":
        return "\n".join(m["content"] for m in rec["messages"])
    return rec["text"]


def _clean_record(rec: dict[str, Any], cfg: DataConfig, counts: _Counts) -> dict[str, Any] | None:
    """Clean and PII-process one record; None when it is dropped."""
    if cfg.task == "chat":
        messages = [{"role": m["role"], "content": clean_text(m["content"], keep_newlines=True)} for m in rec["messages"]]
        out = {"messages": messages}
    else:
        out = {"text": clean_text(rec["text"], keep_newlines=cfg.task == "lm")}
        if cfg.task == "classify":
            out["label"] = str(rec["label"]).strip()
    length = len(_record_text(out, cfg.task))
    if length < cfg.min_chars:
        counts.too_short += 1
        return None
    if length > cfg.max_chars:
        counts.too_long += 1
        return None
    if cfg.pii != "keep":
        fields = [m for m in out["messages"]] if cfg.task == "chat" else [out]
        key = "content" if cfg.task == "chat" else "text"
        found_any = False
        for holder in fields:
            matches = find_pii(holder[key])
            if matches:
                found_any = True
                counts.pii.update(count_by_type(matches))
                if cfg.pii == "redact":
                    holder[key] = redact(holder[key], matches)
        if found_any and cfg.pii == "drop":
            counts.pii_dropped += 1
            return None
    return out


def _units(cfg: DataConfig, raw: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for rec in raw:
        if cfg.task == "lm" and cfg.chunk_chars and len(rec["text"]) > cfg.chunk_chars:
            for piece in chunk_document(rec["text"], cfg.chunk_chars):
                yield {**rec, "text": piece}
        else:
            yield rec


def _clean_and_split(cfg: DataConfig, tmp: Path, progress) -> tuple[_Counts, IngestStats]:
    counts, stats = _Counts(), IngestStats()
    exact_seen: set[bytes] = set()
    near = NearDuplicateIndex(cfg.near_threshold) if cfg.dedupe == "near" else None
    (tmp / "records").mkdir()
    writers = {s: open(tmp / "records" / f"{s}.jsonl", "w", encoding="utf-8") for s in SPLITS}
    task = progress.add_task("clean, dedupe, split", total=None) if progress else None
    try:
        raw = iter_records(cfg.inputs, task=cfg.task, text_field=cfg.text_field, label_field=cfg.label_field,
                           doc_split=cfg.doc_split, encoding=cfg.encoding, skip_bad=cfg.skip_bad, stats=stats)
        for rec in _units(cfg, raw):
            counts.ingested += 1
            if progress:
                progress.advance(task)
            out = _clean_record(rec, cfg, counts)
            if out is None:
                continue
            text = _record_text(out, cfg.task)
            if cfg.dedupe != "none":
                key = exact_key(text)
                if key in exact_seen:
                    counts.duplicates_exact += 1
                    continue
                exact_seen.add(key)
                if near is not None and near.seen_or_add(text):
                    counts.duplicates_near += 1
                    continue
            split_key = json.dumps(out, sort_keys=True, ensure_ascii=False)
            if cfg.task == "classify":
                split = stratified_split(split_key, out["label"], cfg.splits.val, cfg.splits.test, cfg.splits.seed)
                counts.labels[split][out["label"]] += 1
            else:
                split = assign_split(split_key, cfg.splits.val, cfg.splits.test, cfg.splits.seed)
            out["source"] = rec.get("source")
            writers[split].write(json.dumps(out, ensure_ascii=False) + "\n")
            counts.kept += 1
            counts.records[split] += 1
            counts.chars[split] += len(text)
            counts.length_hist += np.histogram([len(text)], bins=LENGTH_BINS)[0]
    finally:
        for fh in writers.values():
            fh.close()
    counts.bad = stats.bad
    if counts.records["train"] == 0:
        raise UserError(_nothing_left(cfg, counts))
    return counts, stats


def _nothing_left(cfg: DataConfig, c: _Counts) -> str:
    if c.kept == 0:
        return (f"nothing left after filtering: {c.ingested} records read; removed {c.too_short} by data.min_chars={cfg.min_chars}, "
                f"{c.too_long} by data.max_chars={cfg.max_chars}, {c.pii_dropped} by data.pii=drop, "
                f"{c.duplicates_exact + c.duplicates_near} as duplicates, {c.bad} as bad records")
    return (f"all {c.kept} records landed in val/test and none in train; lower data.splits.val/test "
            f"or give more records (for one large file, use --doc-split blank-line or line)")


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


def _sample_texts(path: Path, task: str) -> Iterator[str]:
    budget = TOKENIZER_TRAIN_CHARS
    for rec in _iter_jsonl(path):
        text = _record_text(rec, task)
        yield text
        budget -= len(text)
        if budget <= 0:
            return


def _tokenize_splits(cfg: DataConfig, tmp: Path, tokenizer, vocab_size: int, progress) -> tuple[dict, list]:
    tokens: dict[str, dict[str, int]] = {}
    total_counts = np.zeros(vocab_size, dtype=np.int64)
    task = progress.add_task("tokenize", total=len(SPLITS)) if progress else None
    if cfg.task == "lm":
        (tmp / "shards").mkdir()
    for split in SPLITS:
        texts = (_record_text(r, cfg.task) for r in _iter_jsonl(tmp / "records" / f"{split}.jsonl"))
        if cfg.task == "lm":
            n_tokens, n_docs, split_counts = write_shard(tmp / "shards" / f"{split}.bin", tokenizer, texts, vocab_size)
        else:
            n_tokens, n_docs, split_counts = _count_tokens(tokenizer, texts, vocab_size)
        total_counts += split_counts
        tokens[split] = {"tokens": int(n_tokens), "documents": int(n_docs)}
        if progress:
            progress.advance(task)
    top = np.argsort(-total_counts)[:20]
    return tokens, [(int(i), int(total_counts[i])) for i in top if total_counts[i] > 0]


def _count_tokens(tokenizer, texts, vocab_size: int) -> tuple[int, int, np.ndarray]:
    counts = np.zeros(vocab_size, dtype=np.int64)
    n_tokens = n_docs = 0
    batch: list[str] = []
    for text in [*texts, None]:
        if text is not None:
            batch.append(text)
        if batch and (text is None or len(batch) >= 512):
            for enc in tokenizer.backend_tokenizer.encode_batch(batch, add_special_tokens=False):
                counts += np.bincount(np.asarray(enc.ids, dtype=np.int64), minlength=vocab_size)[:vocab_size]
                n_tokens += len(enc.ids)
            n_docs += len(batch)
            batch = []
    return n_tokens, n_docs, counts


def _manifest(cfg, name, files, source_hash, c: _Counts, stats: IngestStats, tokens, tokenizer, vocab_size, top_tokens) -> dict:
    return {
        "format": "llmkit.dataset/1",
        "name": name,
        "task": cfg.task,
        "content_hash": source_hash,
        "sources": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
        "options": cfg.model_dump(exclude={"inputs", "name"}),
        "counts": {
            "ingested": c.ingested, "bad": c.bad, "too_short": c.too_short, "too_long": c.too_long,
            "pii_dropped": c.pii_dropped, "duplicates_exact": c.duplicates_exact,
            "duplicates_near": c.duplicates_near, "kept": c.kept,
        },
        "bad_examples": stats.bad_examples,
        "pii": dict(c.pii),
        "splits": {s: {"records": c.records[s], "chars": c.chars[s], **tokens[s]} for s in SPLITS},
        "labels": {s: dict(c.labels[s]) for s in SPLITS} if cfg.task == "classify" else None,
        "label_set": sorted(set().union(*[set(c.labels[s]) for s in SPLITS])) if cfg.task == "classify" else None,
        "length_histogram": {"bins": LENGTH_BINS, "counts": c.length_hist.tolist()},
        "tokenizer": {"spec": cfg.tokenizer, "kind": tokenizer_kind(tokenizer), "vocab_size": vocab_size,
                      "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                      "path": "tokenizer"},
        "shards": {s: f"shards/{s}.bin" for s in SPLITS} if cfg.task == "lm" else None,
        "shard_dtype": "uint16" if vocab_size < 2**16 else "uint32",
        "top_tokens": top_tokens,
    }
