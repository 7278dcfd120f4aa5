"""How good and how fast is llmkit's PII detector?

Quality: per-type precision / recall / F1 of `llmkit.data.pii.find_pii` on the hand-labelled set
tests/data/pii_cases.jsonl (positives of every type plus hard negatives: dates, prices, versions, hashes,
checksum failures). A prediction is a true positive when its type matches a label and its text equals
the labelled value (surrounding whitespace ignored).

Speed: MB/s of find_pii on tinyshakespeare (1 MB), the number the data stage's >= 10 MB/s goal is checked
against, measured both as one document and as 8,000-character chunks (the data.chunk_chars default the
pipeline cuts long documents into); plus the SMS spam corpus per message, short texts full of numbers
that exercise every digit detector and the per-call overhead. Best of five runs, because the machine may
be shared (the load average is printed with the figures).

Run: .venv/bin/python bench/pii_eval.py [--verbose]   (the last line of output is one JSON object)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # runs from a checkout without an installed package too

from llmkit.data.pii import PII_TYPES, find_pii  # noqa: E402

CASES = ROOT / "tests" / "data" / "pii_cases.jsonl"
SHARED = ROOT.parent / "shared" / "data"
CHUNK = 8000  # data.chunk_chars default


def load_cases(path: Path = CASES) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score(cases: list[dict]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Per-type precision/recall/F1 and a list of human-readable errors."""
    tp, fp, fn = Counter(), Counter(), Counter()
    errors = []
    for case in cases:
        gold = Counter((p["type"], p["value"].strip()) for p in case["pii"])
        pred = Counter((m.type, m.text.strip()) for m in find_pii(case["text"]))
        for key in gold | pred:
            hit = min(gold[key], pred[key])
            tp[key[0]] += hit
            if pred[key] > hit:
                fp[key[0]] += pred[key] - hit
                errors.append(f"FP {key[0]:<11} {key[1]!r}  in {case['text'][:90]!r}")
            if gold[key] > hit:
                fn[key[0]] += gold[key] - hit
                errors.append(f"FN {key[0]:<11} {key[1]!r}  in {case['text'][:90]!r}")
    table = {}
    for t in PII_TYPES:
        p = tp[t] / (tp[t] + fp[t]) if tp[t] + fp[t] else 1.0
        r = tp[t] / (tp[t] + fn[t]) if tp[t] + fn[t] else 1.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        table[t] = {"precision": p, "recall": r, "f1": f1, "support": tp[t] + fn[t],
                    "tp": tp[t], "fp": fp[t], "fn": fn[t]}
    return table, errors


def throughput(docs: list[str], repeats: int = 5) -> float:
    size = sum(len(d.encode("utf-8")) for d in docs)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for d in docs:
            find_pii(d)
        best = min(best, time.perf_counter() - t0)
    return size / 1e6 / best


def main() -> None:
    cases = load_cases()
    n_pos = sum(1 for c in cases if c["pii"])
    table, errors = score(cases)
    print(f"labelled set: {len(cases)} cases ({n_pos} with PII, {len(cases) - n_pos} hard negatives)\n")
    print(f"{'type':<12} {'support':>7} {'tp':>4} {'fp':>4} {'fn':>4} "
          f"{'precision':>9} {'recall':>7} {'f1':>6}")
    for t, row in table.items():
        print(f"{t:<12} {row['support']:>7} {row['tp']:>4} {row['fp']:>4} {row['fn']:>4} "
              f"{row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f}")
    if errors and "--verbose" in sys.argv:
        print("\n" + "\n".join(errors))
    elif errors:
        print(f"\n{len(errors)} errors (--verbose lists them)")

    shakespeare = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    chunks = [shakespeare[i:i + CHUNK] for i in range(0, len(shakespeare), CHUNK)]
    whole = throughput([shakespeare])
    chunked = throughput(chunks)
    speeds = {"tinyshakespeare_whole": whole, "tinyshakespeare_8k_chunks": chunked}
    sms_path = SHARED / "smsspam" / "SMSSpamCollection.tsv"
    if sms_path.exists():
        lines = sms_path.read_text(encoding="utf-8").splitlines()
        sms = [line.split("\t", 1)[1] for line in lines if "\t" in line]
        speeds["smsspam_per_message"] = throughput(sms)
    print(f"\nthroughput (best of 5; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores):")
    for name, v in speeds.items():
        print(f"  {name:<28} {v:8.1f} MB/s")

    print(json.dumps({
        "pii_precision": {t: round(r["precision"], 4) for t, r in table.items()},
        "pii_recall": {t: round(r["recall"], 4) for t, r in table.items()},
        "pii_f1": {t: round(r["f1"], 4) for t, r in table.items()},
        "cases": len(cases),
        "throughput_mb_s": round(min(whole, chunked), 2),
        "throughput_detail_mb_s": {k: round(v, 2) for k, v in speeds.items()},
    }))


if __name__ == "__main__":
    main()
