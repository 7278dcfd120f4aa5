"""Dataset report: the statistics of a prepare run, as manifest.json, as a summary and as plots (PNG).

Counting happens in `pipeline.py` while records stream by (`Counts`); this module only turns the
counts into the manifest every later stage reads and into the figures a person looks at.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmkit.data.splits import SPLITS

# Log-spaced record-length bins in characters, 1 to 1M.
LENGTH_BINS = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536, 1_000_000_000]


@dataclass
class Counts:
    ingested: int = 0
    bad: int = 0
    too_short: int = 0
    too_long: int = 0
    pii_dropped: int = 0
    duplicates_exact: int = 0
    duplicates_near: int = 0
    kept: int = 0
    pii: Counter = field(default_factory=Counter)
    label_spellings: dict[str, dict[str, int]] = field(default_factory=dict)  # class -> its spellings, when several
    label_conflicts: int = 0  # exact duplicates (dropped) whose label differs from the kept record's
    label_conflict_examples: list[str] = field(default_factory=list)
    labels: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in SPLITS})
    records: Counter = field(default_factory=Counter)
    chars: Counter = field(default_factory=Counter)
    length_hist: list[int] = field(default_factory=lambda: [0] * (len(LENGTH_BINS) - 1))

    def label_conflict(self, kept: str, dropped: str, line: str) -> None:
        """A classify record dropped as the duplicate of a text kept under another label: counted, the first few named."""
        self.label_conflicts += 1
        if len(self.label_conflict_examples) < 5:
            source = json.loads(line).get("source")
            self.label_conflict_examples.append(f"{source}: the same text was kept with the label '{kept}', "
                                                f"this one says '{dropped}'")

    def add_length(self, n: int) -> None:
        self.length_hist[min(bisect.bisect_right(LENGTH_BINS, n) - 1, len(self.length_hist) - 1)] += 1


def build_manifest(*, cfg, name: str, files: list[Path], content_hash: str, counts: Counts, bad_examples: list[str],
                   tokens: dict[str, dict[str, int]], tokenizer, top_tokens: list,
                   skipped: list[tuple[str, str]] = (), bad_reasons: dict[str, int] | None = None) -> dict[str, Any]:
    c = counts
    vocab_size = len(tokenizer)
    classify = cfg.task == "classify"
    return {
        "format": "llmkit.dataset/1",
        "name": name,
        "task": cfg.task,
        "content_hash": content_hash,
        "sources": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
        "skipped_files": [{"file": f, "reason": why} for f, why in skipped],
        "options": cfg.model_dump(exclude={"inputs", "name"}),
        "counts": {
            "ingested": c.ingested, "bad": c.bad, "too_short": c.too_short, "too_long": c.too_long,
            "pii_dropped": c.pii_dropped, "duplicates_exact": c.duplicates_exact,
            "duplicates_near": c.duplicates_near, "kept": c.kept,
        },
        "bad_examples": bad_examples,
        "pii": dict(sorted(c.pii.items())),
        "splits": {s: {"records": c.records[s], "chars": c.chars[s], **tokens[s]} for s in SPLITS},
        "labels": {s: dict(sorted(c.labels[s].items())) for s in SPLITS} if classify else None,
        "label_set": sorted(set().union(*[set(c.labels[s]) for s in SPLITS])) if classify else None,
        # 'spam', 'Spam ' and 'SPAM' read as one class, written as its most used spelling: which were merged
        "label_spellings": c.label_spellings if classify else None,
        "label_conflicts": {"count": c.label_conflicts, "examples": c.label_conflict_examples} if classify else None,
        "length_histogram": {"bins": LENGTH_BINS, "counts": list(c.length_hist)},
        "tokenizer": {"spec": cfg.tokenizer, "kind": tokenizer.kind, "vocab_size": vocab_size,
                      "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                      "pad_token_id": tokenizer.pad_token_id,
                      "path": "tokenizer"},
        "shards": {s: f"shards/{s}.bin" for s in SPLITS} if cfg.task == "lm" else None,
        "shard_dtype": "uint16" if vocab_size < 2**16 else "uint32",
        "top_tokens": top_tokens,
        "preference": preference_counts(c, bad_reasons or {}) if cfg.task == "preference" else None,
    }


def preference_counts(c: Counts, bad_reasons: dict[str, int]) -> dict[str, Any]:
    """Pairs and unpaired (KTO) completions per split, and the rows left out by reason."""
    def kinds(counter) -> dict[str, int]:
        return {"pairs": counter["pair"], "unpaired_true": counter["desirable"], "unpaired_false": counter["undesirable"]}

    total = sum((c.labels[s] for s in SPLITS), Counter())
    skipped = {**dict(sorted(bad_reasons.items())), "too_short": c.too_short, "too_long": c.too_long,
               "pii_dropped": c.pii_dropped, "duplicates": c.duplicates_exact + c.duplicates_near}
    return {**kinds(total), "splits": {s: kinds(c.labels[s]) for s in SPLITS},
            "skipped": {reason: n for reason, n in skipped.items() if n}}


def write_plots(folder: Path, length_hist, labels: dict[str, dict[str, int]], task: str) -> list[str]:
    # The object API with the Agg canvas: no pyplot state and no GUI backend probing.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from llmkit.data.figures import use_cjk_font

    use_cjk_font()  # CJK labels in a CJK font, not boxes

    (folder / "plots").mkdir(exist_ok=True)
    written = []
    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = [f"<{b}" if b < 1e9 else "more" for b in LENGTH_BINS[1:]]
    ax.bar(names, list(length_hist), color="#4c72b0")
    ax.set_xlabel("record length (characters)")
    ax.set_ylabel("records")
    ax.set_title("Record lengths")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(folder / "plots" / "lengths.png", dpi=100)
    written.append("plots/lengths.png")
    if task == "classify":
        all_labels = sorted({lab for split in labels.values() for lab in split})
        fig = Figure(figsize=(7, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        bottom = np.zeros(len(all_labels))
        for split, color in zip(SPLITS, ("#4c72b0", "#dd8452", "#55a868"), strict=True):
            values = np.array([labels.get(split, {}).get(lab, 0) for lab in all_labels])
            ax.bar(all_labels, values, bottom=bottom, label=split, color=color)
            bottom += values
        ax.set_ylabel("records")
        ax.set_title("Labels per split")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "plots" / "labels.png", dpi=100)
        written.append("plots/labels.png")
    return written


def summary(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """The report as data: what `llmkit data report --json` prints."""
    counts = manifest["counts"]
    return {
        "name": manifest["name"],
        "task": manifest["task"],
        "path": str(path),
        "records": counts["kept"],
        "counts": counts,
        "duplicates_removed": counts["duplicates_exact"] + counts["duplicates_near"],
        "splits": manifest["splits"],
        "tokens": sum(s["tokens"] for s in manifest["splits"].values()),
        "pii": manifest["pii"],
        "labels": manifest.get("labels"),
        "label_spellings": manifest.get("label_spellings"),
        "label_conflicts": manifest.get("label_conflicts"),
        "length_histogram": manifest.get("length_histogram"),
        "tokenizer": manifest["tokenizer"],
        "top_tokens": manifest["top_tokens"],
        "skipped_files": manifest.get("skipped_files", []),  # absent from manifests written before it was kept
        "plots": sorted(str(p) for p in (path / "plots").glob("*.png")),
        "preference": manifest.get("preference"),
    }
