"""Dataset report: the statistics a manifest holds, as a table and as plots (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# Log-spaced record-length bins in characters, 1 to 1M.
LENGTH_BINS = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536, 1_000_000_000]


def write_plots(folder: Path, length_hist: np.ndarray, labels: dict[str, dict[str, int]], task: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (folder / "plots").mkdir(exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [f"<{b}" if b < 1e9 else "more" for b in LENGTH_BINS[1:]]
    ax.bar(names, length_hist, color="#4c72b0")
    ax.set_xlabel("record length (characters)")
    ax.set_ylabel("records")
    ax.set_title("Record lengths")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(folder / "plots" / "lengths.png", dpi=100)
    plt.close(fig)
    written.append("plots/lengths.png")
    if task == "classify":
        all_labels = sorted({lab for split in labels.values() for lab in split})
        fig, ax = plt.subplots(figsize=(7, 3.5))
        bottom = np.zeros(len(all_labels))
        for split, color in zip(("train", "val", "test"), ("#4c72b0", "#dd8452", "#55a868"), strict=True):
            values = np.array([labels.get(split, {}).get(lab, 0) for lab in all_labels])
            ax.bar(all_labels, values, bottom=bottom, label=split, color=color)
            bottom += values
        ax.set_ylabel("records")
        ax.set_title("Labels per split")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "plots" / "labels.png", dpi=100)
        plt.close(fig)
        written.append("plots/labels.png")
    return written


def summary(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """The report as data: what `llmkit data report --json` prints."""
    return {
        "name": manifest["name"],
        "task": manifest["task"],
        "path": str(path),
        "counts": manifest["counts"],
        "splits": manifest["splits"],
        "tokens": sum(s["tokens"] for s in manifest["splits"].values()),
        "pii": manifest["pii"],
        "labels": manifest.get("labels"),
        "tokenizer": manifest["tokenizer"],
        "top_tokens": manifest["top_tokens"],
        "plots": sorted(str(p) for p in (path / "plots").glob("*.png")),
    }
