"""Distillation: a student with at most half the teacher's parameters, for a classifier and an LM.

Classifier: the teacher is minilm-l6 fine-tuned on SMS Spam (1 epoch); the student a nano-sized
BERT on the teacher's tokenizer (~20% of its parameters), trained by distillation. Goal: the
student keeps >= 95% of the teacher's accuracy, both scored on the test split (val picks the
student's best epoch, so val would flatter it). LM: the teacher is an 8-layer
nano-width Llama pretrained on tiny shakespeare (characters); the student has 3 layers.
Teacher and student perplexity are printed.

    .venv/bin/python bench/distill.py [--clf-epochs N] [--lm-steps N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def llmkit(ws: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "llmkit", *args, "--workspace", str(ws), "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"llmkit {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clf-epochs", type=float, default=3)
    ap.add_argument("--lm-steps", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        llmkit(ws, "data", "prepare", str(DATA / "smsspam" / "SMSSpamCollection.tsv"), "--name", "smsspam", "--task", "classify")
        llmkit(ws, "train", "classify", "--base", "minilm-l6", "--data", "smsspam", "--epochs", "1", "--max-length", "64",
               "--name", "spam-teacher")
        clf = llmkit(ws, "train", "distill", "--teacher", "spam-teacher", "--data", "smsspam", "--student-preset", "nano",
                     "--epochs", str(args.clf_epochs), "--batch-size", "32", "--max-length", "64", "--name", "spam-student")["metrics"]

        llmkit(ws, "data", "prepare", str(DATA / "tinyshakespeare" / "input.txt"), "--name", "shakespeare", "--task", "lm",
               "--tokenizer", "char", "--doc-split", "blank-line", "--pii", "keep", "--dedupe", "none")
        config = Path(tmp) / "teacher.yaml"
        config.write_text(json.dumps({"pretrain": {"model": {"num_hidden_layers": 8}, "eval_max_batches": 8}}))
        llmkit(ws, "train", "pretrain", "--data", "shakespeare", "--preset", "nano", "--context", "128", "--max-steps",
               str(args.lm_steps), "--lr", "2e-3", "--config", str(config), "--name", "lm-teacher")
        lm = llmkit(ws, "train", "distill", "--teacher", "lm-teacher", "--data", "shakespeare", "--student-preset", "nano",
                    "--student-layers", "3", "--max-steps", str(args.lm_steps), "--batch-size", "16", "--max-length", "128",
                    "--eval-max-examples", "256", "--name", "lm-student")["metrics"]
    figures = {"clf_teacher_accuracy": round(clf["teacher_test_accuracy"], 4), "clf_student_accuracy": round(clf["test_accuracy"], 4),
               "clf_teacher_val_accuracy": round(clf["teacher_val_accuracy"], 4), "clf_student_val_accuracy": round(clf["val_accuracy"], 4),
               "clf_accuracy_kept": clf["accuracy_kept"], "clf_parameter_ratio": clf["parameter_ratio"],
               "clf_student_seconds": clf["seconds"],
               "lm_teacher_ppl": round(lm["teacher_val_ppl"], 3), "lm_student_ppl": round(lm["val_ppl"], 3),
               "lm_student_ppl_before": round(2.718281828 ** lm["student_val_loss_before"], 3),
               "lm_parameter_ratio": lm["parameter_ratio"], "lm_student_seconds": lm["seconds"], "goal_accuracy_kept": 0.95}
    figures["met"] = clf["accuracy_kept"] >= 0.95 and clf["parameter_ratio"] <= 0.5
    print(f"classifier (test split): teacher accuracy {figures['clf_teacher_accuracy']:.4f}, student {figures['clf_student_accuracy']:.4f} "
          f"({clf['accuracy_kept']:.1%} kept) with {clf['parameter_ratio']:.1%} of the parameters; goal >= 95% kept: "
          f"{'met' if figures['met'] else 'NOT met'}")
    print(f"language model: teacher perplexity {figures['lm_teacher_ppl']:.2f}, student {figures['lm_student_ppl']:.2f} "
          f"(from {figures['lm_student_ppl_before']:.2f} untrained) with {lm['parameter_ratio']:.1%} of the parameters")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
