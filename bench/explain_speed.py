"""Seconds per explanation, per method, for a 64-token input on CPU.

Two models: the SMS Spam classifier (minilm-l6 fine-tuned briefly in a fresh workspace through the
CLI, as bench/classify_smsspam.py does, on the first 1,000 messages for 1 epoch) and a micro LM
(the `micro` preset, ~11 M parameters, random init, byte-level BPE 2,048 trained on tiny
shakespeare; speed does not depend on training). Each model is loaded once; every method runs
once untimed and then `--runs` timed times on a 64-token input. `attribution_s` is the method
alone, `total_s` adds the faithfulness check (deletion AOPC, 6 x 10 forwards).

Goal: Integrated Gradients with 50 steps <= 2 s per explanation on CPU.

    .venv/bin/python bench/explain_speed.py [--runs 3] [--steps 50] [--messages 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMS = ROOT.parent / "shared" / "data" / "smsspam" / "SMSSpamCollection.tsv"
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
METHODS = ("ig", "occlusion", "shap", "attention")


def text_of(tokenizer, source: str, n: int, special: int) -> str:
    """A prefix of `source` that tokenizes to exactly n tokens including `special` added ones."""
    ids = tokenizer(source, add_special_tokens=False)["input_ids"][: n - special]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return text


def time_methods(loaded, text: str, steps: int, runs: int) -> dict[str, dict[str, float]]:
    from llmkit.config import ExplainConfig
    from llmkit.explain import explain_loaded

    model, tokenizer, kind, labels, max_length, ref = loaded
    out = {}
    for method in METHODS:
        cfg = ExplainConfig(method=method, steps=steps)
        explain_loaded(model, tokenizer, kind, text, cfg, labels=labels, max_length=max_length, name=ref)  # warm-up
        attribution, total, exp = [], [], None
        for _ in range(runs):
            exp = explain_loaded(model, tokenizer, kind, text, cfg, labels=labels, max_length=max_length, name=ref)
            attribution.append(exp.seconds)
            total.append(exp.seconds_total)
        out[method] = {"attribution_s": round(statistics.median(attribution), 3), "total_s": round(statistics.median(total), 3),
                       "tokens": len(exp.tokens), "aopc": round(exp.aopc, 4), "aopc_random": round(exp.aopc_random, 4)}
        if method == "ig":
            out[method]["convergence_delta"] = round(exp.convergence_delta, 5)
    return out


def classifier(tmp: Path, messages: int):
    from llmkit.explain import load_for_explain
    from llmkit.registry import Registry

    source = tmp / "sms.tsv"
    source.write_text("\n".join(SMS.read_text(encoding="utf-8").splitlines()[:messages]) + "\n", encoding="utf-8")
    llmkit = [sys.executable, "-m", "llmkit"]
    ws = ["--workspace", str(tmp / "ws"), "--json"]
    subprocess.run([*llmkit, "data", "prepare", str(source), "--name", "sms", "--task", "classify", *ws],
                   check=True, capture_output=True)
    subprocess.run([*llmkit, "train", "classify", "--base", "minilm-l6", "--data", "sms", "--epochs", "1", "--lr", "1e-4",
                    "--batch-size", "32", "--max-length", "80", "--name", "sms-clf", *ws], check=True, capture_output=True)
    return load_for_explain("sms-clf", Registry.for_workspace(tmp / "ws"))


def micro_lm(tmp: Path):
    import torch
    from transformers import LlamaForCausalLM

    from llmkit.data.tokenizer import build_tokenizer
    from llmkit.explain import load_for_explain
    from llmkit.models.presets import llama_config

    text = SHAKESPEARE.read_text(encoding="utf-8")[:300_000]
    tok = build_tokenizer("bpe:2048", text.split("\n\n"))
    config = llama_config("micro", len(tok), 256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    folder = tmp / "micro-lm"
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return load_for_explain(str(folder))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--messages", type=int, default=1000, help="SMS messages the classifier trains on")
    args = ap.parse_args()

    import torch

    prose = SHAKESPEARE.read_text(encoding="utf-8")[:4000]
    spam = " ".join(line.split("\t", 1)[1] for line in SMS.read_text(encoding="utf-8").splitlines() if line.startswith("spam"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        clf = classifier(tmp, args.messages)
        train_s = time.perf_counter() - started
        results = {"classifier": time_methods(clf, text_of(clf[1], spam, 64, 2), args.steps, args.runs)}
        del clf
        lm = micro_lm(tmp)
        results["micro_lm"] = time_methods(lm, text_of(lm[1], prose, 64, 1), args.steps, args.runs)
    for model, methods in results.items():
        for method, r in methods.items():
            print(f"{model:10s} {method:9s} {r['tokens']} tokens: {r['attribution_s']:.3f} s attribution, "
                  f"{r['total_s']:.3f} s with faithfulness (AOPC {r['aopc']:.3f} vs random {r['aopc_random']:.3f})")
    ig = max(results["classifier"]["ig"]["attribution_s"], results["micro_lm"]["ig"]["attribution_s"])
    figures = {**{f"{m}_{k}": v for m, methods in results.items() for k, v in methods.items()},
               "steps": args.steps, "runs": args.runs, "threads": torch.get_num_threads(), "classifier_train_s": round(train_s, 1),
               "goal_ig_s": 2.0, "met": ig <= 2.0}
    print(f"IG with {args.steps} steps: {ig:.3f} s at most per explanation; goal <= 2 s: {'met' if figures['met'] else 'NOT met'}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
