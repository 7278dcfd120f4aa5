"""SMS Spam with the built-in minilm-l6 encoder on CPU, as a user runs it.

Goal: F1(spam) >= 0.95 and accuracy >= 0.98 on the held-out 20% within 10 minutes wall.
The split is stratified 80/20 with a fixed seed; 8% of the whole (a tenth of the 80%) is set
aside as the val split that picks the best epoch, so the test 20% is never looked at in
training. The wall time covers `llmkit data prepare` and `llmkit train classify`, each a fresh
process.

    .venv/bin/python bench/classify_smsspam.py [--epochs N] [--lr X] [--batch N] [--max-length N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "smsspam" / "SMSSpamCollection.tsv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        llmkit = [sys.executable, "-m", "llmkit"]
        ws = ["--workspace", str(tmp / "ws"), "--json"]
        config = tmp / "split.yaml"
        config.write_text(json.dumps({"data": {"splits": {"val": 0.08, "test": 0.2, "seed": args.seed}}}))
        started = time.perf_counter()
        subprocess.run([*llmkit, "data", "prepare", str(DATA), "--name", "smsspam", "--task", "classify",
                        "--config", str(config), *ws], check=True, capture_output=True)
        prep_s = time.perf_counter() - started
        out = subprocess.run([*llmkit, "train", "classify", "--base", "minilm-l6", "--data", "smsspam", "--epochs", str(args.epochs),
                              "--lr", str(args.lr), "--batch-size", str(args.batch), "--max-length", str(args.max_length),
                              "--seed", str(args.seed), *ws], check=True, capture_output=True, text=True)
        wall = time.perf_counter() - started
        m = json.loads(out.stdout)["metrics"]
    figures = {"test_f1_spam": round(m["test_f1_spam"], 4), "test_accuracy": round(m["test_accuracy"], 4),
               "test_precision_spam": round(m["test_precision_spam"], 4), "test_recall_spam": round(m["test_recall_spam"], 4),
               "test_macro_f1": round(m["test_macro_f1"], 4), "wall_s": round(wall, 1), "prepare_s": round(prep_s, 1),
               "train_s": m["seconds"], "epochs": args.epochs, "best_step": m["best_step"], "peak_memory_mb": m["peak_memory_mb"],
               "precision": m["precision"], "goal_f1_spam": 0.95, "goal_accuracy": 0.98, "goal_wall_s": 600}
    figures["met"] = figures["test_f1_spam"] >= 0.95 and figures["test_accuracy"] >= 0.98 and wall <= 600
    print(f"test F1(spam) {m['test_f1_spam']:.4f} (P {m['test_precision_spam']:.4f}, R {m['test_recall_spam']:.4f}), accuracy "
          f"{m['test_accuracy']:.4f}; wall {wall:.1f}s (prepare {prep_s:.1f}s, training {m['seconds']:.1f}s, {m['precision']}); "
          f"goal F1 >= 0.95, accuracy >= 0.98 within 600 s: {'met' if figures['met'] else 'NOT met'}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
