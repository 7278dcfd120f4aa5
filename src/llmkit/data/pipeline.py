"""`llmkit data prepare`: raw files in, one registered dataset version out.

Pass 1: ingest -> clean -> length filters -> PII -> dedupe (exact, near) -> split -> records/<split>.jsonl.
Then the tokenizer (trained on a sample of train only), pass 2: token shards for `lm` (token counts
for the other tasks), plots and manifest.json; all inside a temporary folder renamed into place, and
registered last. The same inputs and options hash the same, so running twice finds the existing
version instead of making a new one.

Both passes stream: records go through in chunks and nothing holds the dataset. The per-record work
(cleaning, PII, MinHash signatures; encoding in pass 2) is a pure function of the record, so on
large inputs it runs in worker processes, chunks in order and a bounded number in flight; every
decision that depends on earlier records (the exact-duplicate set, the LSH index) stays in this
process. The output is therefore the same with or without workers (LLMKIT_DATA_WORKERS=0 turns them off).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.config import DataConfig
from llmkit.data.clean import RecordOptions, chunk_document, clean_chunk, label_line, preference_texts
from llmkit.data.dataset import DatasetVersion
from llmkit.data.dedupe import NearDuplicateIndex
from llmkit.data.encoder import FastEncoder
from llmkit.data.ingest import IngestStats, expand_inputs, iter_records
from llmkit.data.report import Counts, build_manifest, write_plots
from llmkit.data.shards import ShardWriter, token_counts
from llmkit.data.splits import SPLITS
from llmkit.data.tokenizer import build_tokenizer, check_spec
from llmkit.data.workers import Workers, byte_ranges, chunks, worker_count
from llmkit.errors import UserError
from llmkit.registry import Registry, check_name, default_name
from llmkit.workspace import Workspace, atomic_dir

# A BPE vocabulary learns little from more text beyond ~500 characters per entry (bench: 4M -> 20M
# characters improved held-out compression by about 1 % at 4k and 16k entries, for 5x the time).
TOKENIZER_CHARS_PER_ENTRY = 500
TOKENIZER_TRAIN_CHARS = (4_000_000, 20_000_000)  # bounds of the sample


def prepare(cfg: DataConfig, ws: Workspace | None = None, registry: Registry | None = None, progress=None) -> DatasetVersion:
    cfg = DataConfig.given(cfg, "llmkit.data.prepare")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    if not cfg.inputs:
        raise UserError("data.inputs is empty: give at least one file, folder or glob")
    check_spec(cfg.tokenizer)
    files = expand_inputs(cfg.inputs, cfg.include, cfg.exclude)
    name = cfg.name or _default_name(files[0])
    check_name(name, "dataset")
    source_hash = _source_hash(files, cfg)
    existing = registry.find_by_hash("dataset", source_hash, name)
    if existing is not None and existing.path and (Path(existing.path) / "manifest.json").exists():
        return _existing(existing)

    target = ws.folder("datasets", f"{name}-{source_hash[:12]}")
    clock = _Clock()
    n_workers = worker_count(files)
    with atomic_dir(target) as tmp, Workers(n_workers) as workers:
        counts, stats, chars = clock("records", _first_pass, cfg, tmp, workers, progress)
        # The training sample (at most TOKENIZER_TRAIN_CHARS) is read first: a generator feeding the trainer
        # would need the GIL that the plots hold. Training runs in Rust without the GIL, the plots meanwhile.
        texts = [chars] if cfg.tokenizer == "char" else []
        if cfg.tokenizer.startswith("bpe"):
            texts = clock("sample", lambda: list(_sample(cfg, tmp, counts)))
        with ThreadPoolExecutor(1) as thread:
            training = thread.submit(clock, "tokenizer", build_tokenizer, cfg.tokenizer, texts)
            labels = {s: dict(c) for s, c in counts.labels.items()}
            clock("plots", write_plots, tmp, counts.length_hist, labels, cfg.task)
            tokenizer = training.result()
        tokenizer.save_pretrained(tmp / "tokenizer")
        tokens, top = clock("tokens", _second_pass, cfg, tmp, tokenizer, workers, progress)
        _encoder_cache.clear()
        top_tokens = [[tokenizer.token_text(i), n] for i, n in top]
        manifest = build_manifest(cfg=cfg, name=name, files=files, content_hash=source_hash, counts=counts,
                                  bad_examples=stats.bad_examples, tokens=tokens, tokenizer=tokenizer,
                                  top_tokens=top_tokens, skipped=stats.skipped, bad_reasons=stats.bad_reasons)
        manifest["seconds"] = round(time.perf_counter() - clock.started, 3)
        manifest["timings"] = {**clock.seconds, "workers": n_workers}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    try:
        # Another process may have registered the same content meanwhile (into the same folder).
        existing = registry.find_by_hash("dataset", source_hash, name)
        if existing is not None and existing.path and Path(existing.path) == target:
            return _existing(existing)
        rec = registry.add(
            "dataset", name, kind=cfg.task, path=target, content_hash=source_hash, params=cfg.model_dump(),
            metrics={"records": counts.kept, "tokens": sum(t["tokens"] for t in tokens.values())},
        )
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # an unregistered folder would be an orphan
        raise
    manifest["version"] = rec.version
    return DatasetVersion(rec.id, rec.name, rec.version, target, cfg.task, manifest)


class _Clock:
    """Seconds per phase, for the manifest: where a slow prepare spent its time."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str, fn: Callable, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[phase] = round(time.perf_counter() - t0, 3)


def _existing(rec) -> DatasetVersion:
    manifest = json.loads((Path(rec.path) / "manifest.json").read_text())
    manifest["version"] = rec.version
    return DatasetVersion(rec.id, rec.name, rec.version, Path(rec.path), rec.kind, manifest, existed=True)


def _default_name(first: Path) -> str:
    stem = first.name.split(".")[0] if first.is_file() else first.name
    return default_name(stem, fallback="dataset")


READERS_VERSION = 2


def _source_hash(files: list[Path], cfg: DataConfig) -> str:
    h = hashlib.sha256()
    # The globs count through the files they choose (their names and bytes below), so the same files
    # chosen another way are the same dataset.
    options = cfg.model_dump(exclude={"inputs", "name", "include", "exclude"})
    h.update(json.dumps(options, sort_keys=True).encode())
    # What the readers make of the same bytes: after a change in how files are read (Excel's `;` CSVs, labels
    # differing in case as one class) the same files are prepared again, not answered with the dataset the old
    # readers made. Raise it whenever the records of unchanged files change.
    h.update(f"readers:{READERS_VERSION}\x00".encode())
    for path in files:
        h.update(path.name.encode() + b"\x00")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


# -- pass 1: clean, PII, dedupe, split -------------------------------------------------------------


def _units(cfg: DataConfig, raw: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for rec in raw:
        if cfg.task == "lm" and cfg.chunk_chars and len(rec["text"]) > cfg.chunk_chars:
            for piece in chunk_document(rec["text"], cfg.chunk_chars):
                yield {**rec, "text": piece}
        else:
            yield rec


def _raw_size(rec: dict[str, Any]) -> int:
    if "prompt" in rec:  # preference
        return sum(len(t) for t in preference_texts(rec))
    return len(rec["text"]) if "text" in rec else sum(len(m["content"] or "") for m in rec["messages"])


def _first_pass(cfg: DataConfig, tmp: Path, workers: Workers, progress) -> tuple[Counts, IngestStats, str]:
    counts, stats = Counts(), IngestStats()
    # 16 bytes per unique record (and the folded label of a classify one): grows with the records kept, see dedupe.py
    exact_seen: dict[bytes, str | None] = {}
    near = NearDuplicateIndex(cfg.near_threshold) if cfg.dedupe == "near" else None
    near_pairs = NearDuplicateIndex(cfg.near_threshold, parts=2) if cfg.dedupe == "near" and cfg.task == "preference" else None
    opts = RecordOptions(cfg.task, cfg.min_chars, cfg.max_chars, cfg.pii, near is not None, cfg.splits.val,
                         cfg.splits.test, cfg.splits.seed, cfg.tokenizer == "char")
    chars: set[str] = set()
    spellings = _Spellings()
    (tmp / "records").mkdir()
    writers = {s: open(tmp / "records" / f"{s}.jsonl", "w", encoding="utf-8") for s in SPLITS}
    task = progress.add_task("clean, dedupe, split", total=None) if progress else None
    try:
        raw = iter_records(cfg.inputs, task=cfg.task, text_field=cfg.text_field, label_field=cfg.label_field,
                           doc_split=cfg.doc_split, encoding=cfg.encoding, skip_bad=cfg.skip_bad, stats=stats,
                           include=cfg.include, exclude=cfg.exclude)
        jobs = ((opts, chunk) for chunk in chunks(_units(cfg, raw), _raw_size))
        for results in workers.map(clean_chunk, jobs):
            for status, pii, *kept in results:
                counts.ingested += 1
                if pii:
                    counts.pii.update(pii)
                if status != "kept":
                    setattr(counts, status, getattr(counts, status) + 1)
                    continue
                line, length, key, sig, split, label, split_chars = kept
                if cfg.dedupe != "none":
                    if key in exact_seen:
                        counts.duplicates_exact += 1
                        if cfg.task == "classify" and label.casefold() != exact_seen[key]:
                            counts.label_conflict(exact_seen[key], label, line)
                        continue
                    exact_seen[key] = label.casefold() if cfg.task == "classify" else None
                    index = near_pairs if sig is not None and near_pairs is not None and len(sig) > near.num_perm else near
                    if index is not None and index.seen_or_add(sig):
                        counts.duplicates_near += 1
                        continue
                if cfg.task == "classify":
                    line, label = spellings.write(line, label)
                if label is not None:
                    counts.labels[split][label] += 1
                if split_chars:
                    chars.update(split_chars)
                writers[split].write(line)
                counts.kept += 1
                counts.records[split] += 1
                counts.chars[split] += length
                counts.add_length(length)
            if progress:
                progress.advance(task, len(results))
    finally:
        for fh in writers.values():
            fh.close()
    counts.bad = stats.bad
    spellings.settle(tmp / "records", counts)
    if counts.records["train"] == 0:
        raise UserError(_nothing_left(cfg, counts, stats.bad_examples))
    return counts, stats, "".join(sorted(chars))


class _Spellings:
    """One class per label whatever its case and spacing ('spam', 'Spam ', 'SPAM'), written as its most used spelling.

    Records are written with the first spelling seen; when the pass is over and another spelling of a class was
    used more, the records files are rewritten with that one (a few label prefixes: classify data is small).
    `counts.label_spellings` keeps, per class, how often each spelling was used, for the report.
    """

    def __init__(self):
        self.first: dict[str, str] = {}  # folded label -> the spelling records are written with
        self.used: dict[str, Counter] = {}  # folded label -> spelling -> records

    def write(self, line: str, spelling: str) -> tuple[str, str]:
        folded = spelling.casefold()
        chosen = self.first.setdefault(folded, spelling)
        self.used.setdefault(folded, Counter())[spelling] += 1
        return (line if chosen == folded else label_line(line, folded, chosen)), chosen

    def settle(self, folder: Path, counts: Counts) -> None:
        best = {f: used.most_common(1)[0][0] for f, used in self.used.items()}  # ties: the first seen
        counts.label_spellings = {best[f]: dict(used) for f, used in self.used.items() if len(used) > 1}
        moved = {self.first[f]: b for f, b in best.items() if b != self.first[f]}
        if not moved:
            return
        for split in SPLITS:
            counts.labels[split] = Counter({moved.get(k, k): n for k, n in counts.labels[split].items()})
            path = folder / f"{split}.jsonl"
            tmp = path.with_suffix(".relabel")
            with open(path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
                for line in src:
                    label = json.loads(line)["label"]
                    dst.write(label_line(line, label, moved[label]) if label in moved else line)
            tmp.replace(path)


def _nothing_left(cfg: DataConfig, c: Counts, bad_examples: list[str]) -> str:
    filtered = c.too_short + c.too_long + c.pii_dropped + c.duplicates_exact + c.duplicates_near
    if c.ingested == 0 and c.bad == 0:  # "loosen the filter" sent people looking for a filter that removed nothing
        return (f"no records in {', '.join(cfg.inputs)}: the files hold no text (blank lines and empty rows are "
                "skipped); check the paths, or --text-field for a table")
    if c.kept == 0 and c.bad and not filtered:
        return (f"every record was bad ({c.bad} skipped under --skip-bad), the first: {bad_examples[0]}"
                if bad_examples else f"every record was bad ({c.bad} skipped under --skip-bad)")
    if c.kept == 0:
        return (f"nothing left after filtering: {c.ingested + c.bad} records read; removed {c.too_short} by data.min_chars={cfg.min_chars}, "
                f"{c.too_long} by data.max_chars={cfg.max_chars}, {c.pii_dropped} by data.pii=drop, "
                f"{c.duplicates_exact} exact and {c.duplicates_near} near duplicates (data.dedupe={cfg.dedupe}); "
                f"{c.bad} bad records skipped; loosen the filter that removed them")
    return (f"all {c.kept} records landed in val/test and none in train; lower data.splits.val/test "
            f"or give more records (for one large file, use --doc-split blank-line or line)")


def _texts(rec: dict[str, Any]) -> list[str]:
    if "prompt" in rec:  # preference
        return preference_texts(rec)
    return [m["content"] for m in rec["messages"]] if "messages" in rec else [rec["text"]]


def _sample(cfg: DataConfig, tmp: Path, counts: Counts) -> Iterator[str]:
    """Train-split texts for the BPE trainer: every k-th record, so the sample spans the whole split."""
    vocab = int(cfg.tokenizer.partition(":")[2] or 0) if cfg.tokenizer.startswith("bpe") else 0
    low, high = TOKENIZER_TRAIN_CHARS
    budget = min(high, max(low, TOKENIZER_CHARS_PER_ENTRY * vocab))
    stride = max(1, math.ceil(counts.chars["train"] / budget))
    with open(tmp / "records" / "train.jsonl", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i % stride == 0:
                yield from _texts(json.loads(line))


# -- pass 2: tokens --------------------------------------------------------------------------------

_encoder_cache: dict[str, FastEncoder] = {}


def _encode_chunk(job: tuple[str, int, int, str, int, int]) -> tuple[np.ndarray, int, int, np.ndarray]:
    """Bytes start:end of a records file -> (ids with a separator before each text, records, texts, id counts).

    The worker reads its lines itself: the parent only finds where chunks end, so it neither decodes
    nor pickles the text.
    """
    tokenizer_json, sep_id, vocab_size, path, start, end = job
    encoder = _encoder_cache.get(tokenizer_json)
    if encoder is None:
        from tokenizers import Tokenizer

        _encoder_cache.clear()  # one tokenizer at a time: a long-lived process prepares many datasets
        encoder = _encoder_cache[tokenizer_json] = FastEncoder(Tokenizer.from_file(tokenizer_json), sep_id)
    with open(path, "rb") as fh:
        fh.seek(start)
        lines = fh.read(end - start).split(b"\n")[:-1]  # every line ends with "\n", never inside (JSON)
    texts = [t for line in lines for t in _texts(json.loads(line))]
    ids = encoder.encode(texts)
    dtype = np.uint16 if vocab_size < 2**16 else np.uint32
    return ids.astype(dtype), len(lines), len(texts), token_counts(ids, vocab_size)


def _second_pass(cfg: DataConfig, tmp: Path, tokenizer, workers: Workers, progress) -> tuple[dict, list]:
    vocab_size, sep = len(tokenizer), tokenizer.eos_token_id
    tokenizer_json = str(tmp / "tokenizer" / "tokenizer.json")
    tokens: dict[str, dict[str, int]] = {}
    total = np.zeros(vocab_size, dtype=np.int64)
    overhead = _chat_overhead(tokenizer) if cfg.task == "chat" else 0
    task = progress.add_task("tokenize", total=len(SPLITS)) if progress else None
    if cfg.task == "lm":
        (tmp / "shards").mkdir()
    for split in SPLITS:
        path = tmp / "shards" / f"{split}.bin" if cfg.task == "lm" else None
        texts = 0
        records = str(tmp / "records" / f"{split}.jsonl")
        with ShardWriter(path, vocab_size, sep) as shard:
            jobs = ((tokenizer_json, sep, vocab_size, records, a, b) for a, b in byte_ranges(Path(records)))
            for ids, n_records, n_texts, counts in workers.map(_encode_chunk, jobs):
                shard.add(ids, n_records, counts)
                texts += n_texts
        shard.counts[sep] -= texts
        total += shard.counts
        if cfg.task == "lm":  # the shard as training reads it, separators included
            tokens[split] = {"tokens": shard.tokens, "documents": shard.documents}
        else:  # the texts' tokens, plus for chat the template's markers around each message
            n = shard.tokens - texts + overhead * texts
            tokens[split] = {"tokens": n, "documents": shard.documents}
        if progress:
            progress.advance(task)
    top = np.argsort(-total, kind="stable")[:20]
    return tokens, [(int(i), int(total[i])) for i in top if total[i] > 0]


def _chat_overhead(tokenizer) -> int:
    """Tokens the chat template adds around one message's content (<|role|>, newlines, <|end|>)."""
    empty = tokenizer.backend.encode("<|user|>\n<|end|>\n", add_special_tokens=False)
    return len(empty.ids)
