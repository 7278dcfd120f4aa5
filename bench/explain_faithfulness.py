"""Faithfulness of each explanation method: deletion AOPC against random deletion, on the SMS classifier.

The figures the README quotes. Same setup as tests/explain/test_explain.py
(`test_ig_occlusion_and_shap_are_more_faithful_than_random_deletion` with the `sms_classifier`
fixture of tests/conftest.py): minilm-l6 fine-tuned for 2 epochs (batch 16, lr 1e-4, max length 48,
seed 1) on the first 700 SMS Spam messages (stratified 70/15/15 splits), then each method explains
the probability of "spam" on three clear spam messages (IG with 20 steps). Per method: the mean
deletion AOPC (remove the top 1..10 attributed tokens, average the drop of p(spam)) and the mean
AOPC of random deletion orders (5 seeds; the same for every method, since it ignores the scores).
Attention rollout is listed too: it is a picture of the model, not an explanation, and often loses.

    .venv/bin/python bench/explain_faithfulness.py [--messages 700] [--epochs 2] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMS = ROOT.parent / "shared" / "data" / "smsspam" / "SMSSpamCollection.tsv"
METHODS = ("ig", "occlusion", "shap", "attention")
# The first three messages of SPAM in tests/explain/test_explain.py.
TEXTS = [
    "WINNER!! Claim your free prize now, call 09061701461 to collect",
    "URGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt CLAIM to 81010",
    "Congratulations! You have been selected to receive a £900 cash prize. Call 09050000327 now to claim",
]


def train_classifier(root: Path, messages: int, epochs: float):
    """The sms_classifier fixture, in a workspace of its own."""
    from llmkit.config import ClassifyConfig, DataConfig
    from llmkit.data import prepare
    from llmkit.explain import load_for_explain
    from llmkit.registry import Registry
    from llmkit.train.classification import classify
    from llmkit.workspace import Workspace

    source = root / "sms-sample.tsv"
    source.write_text("\n".join(SMS.read_text(encoding="utf-8").splitlines()[:messages]) + "\n", encoding="utf-8")
    ws = Workspace.open(root)
    registry = Registry.for_workspace(ws.root)
    prepare(DataConfig(inputs=[str(source)], name="sms", task="classify", tokenizer="char",
                       splits={"val": 0.15, "test": 0.15}), ws, registry)
    classify(ClassifyConfig(base="minilm-l6", data="sms", name="sms-clf", epochs=epochs, batch_size=16, lr=1e-4,
                            max_length=48, seed=1), ws, registry)
    return load_for_explain("sms-clf", registry)


def faithfulness(loaded, steps: int) -> dict[str, dict[str, float]]:
    import numpy as np

    from llmkit.config import ExplainConfig
    from llmkit.explain import explain_loaded

    model, tokenizer, kind, labels, max_length, ref = loaded
    out = {}
    for method in METHODS:
        runs = [explain_loaded(model, tokenizer, kind, text, ExplainConfig(method=method, target="spam", steps=steps),
                               labels=labels, max_length=max_length, name=ref) for text in TEXTS]
        out[method] = {"aopc": round(float(np.mean([r.aopc for r in runs])), 3),
                       "aopc_random": round(float(np.mean([r.aopc_random for r in runs])), 3),
                       "wins": sum(r.aopc > r.aopc_random for r in runs),
                       "p_spam": round(float(np.mean([r.probability for r in runs])), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=700, help="SMS messages the classifier is trained on")
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--steps", type=int, default=20, help="Integrated Gradients steps")
    args = ap.parse_args()

    import torch

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        loaded = train_classifier(Path(tmp), args.messages, args.epochs)
        train_s = time.perf_counter() - started
        results = faithfulness(loaded, args.steps)
    print(f"deletion AOPC on {len(TEXTS)} spam messages (target 'spam'; higher = more faithful)")
    print(f"{'method':10s} {'AOPC':>6s} {'random':>7s} {'beats random':>13s}")
    for method, r in results.items():
        print(f"{method:10s} {r['aopc']:6.3f} {r['aopc_random']:7.3f} {r['wins']:>9d} of {len(TEXTS)}")
    figures = {**{f"{m}_{k}": v for m, r in results.items() for k, v in r.items()},
               "random_aopc": results["ig"]["aopc_random"], "texts": len(TEXTS), "messages": args.messages,
               "epochs": args.epochs, "steps": args.steps, "threads": torch.get_num_threads(),
               "train_s": round(train_s, 1), "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
