"""Compression on a trained micro model (~11 M parameters): one table of size, perplexity and speed.

Trains the micro preset on tiny shakespeare (byte-level BPE 2,048, context 256) for --steps steps,
then: fp32, int8-dynamic, int8-weight, int4-weight, magnitude 50 %, Wanda 50 %, Wanda 2:4, and GGUF
f16 / q8_0 / q4_0 — each through the llmkit command a user would run, perplexity on the same val
records (context 256) and batch-1 greedy decode speed (64-token prompt, 64 new tokens) measured by
`bench-model`. The PyTorch reference for speed is Hugging Face `generate` (fp32, greedy, KV cache).

Goals: int8 Δppl ≤ 1 % at ≥ 3.5× smaller; int4 and q4_0 Δppl ≤ 5 %; Wanda 50 % below magnitude 50 %;
GGUF q8_0 decode ≥ 5× PyTorch fp32 generate.

    .venv/bin/python bench/compress.py [--steps N]
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
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def llmkit(ws: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "llmkit", *args, "--workspace", str(ws), "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"llmkit {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def hf_generate_speed(model_dir: Path, prompt_tokens: int = 64, new_tokens: int = 64, runs: int = 3) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.randint(0, lm.config.vocab_size, (1, prompt_tokens), generator=torch.Generator().manual_seed(0))
    best = 0.0
    with torch.no_grad():
        lm.generate(ids, max_new_tokens=4, do_sample=False)
        for _ in range(runs):
            start = time.perf_counter()
            out = lm.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            best = max(best, (out.shape[1] - prompt_tokens) / (time.perf_counter() - start))
    return best


def q4_agreement(ws: Path, base: dict, variants: list, new_tokens: int = 128) -> dict[str, float]:
    """Share of 128 greedy tokens (after a few prompts) where each GGUF export agrees with PyTorch fp32."""
    from llmkit.generate import encode_prompt, generate_ids
    from llmkit.models.io import load_causal_lm, resolve_model
    from llmkit.optimize.llama_cpp_backend import LlamaCppBackend, greedy
    from llmkit.registry import Registry

    reg = Registry.for_workspace(ws)
    lm, tok = load_causal_lm(resolve_model(base["id"], reg))
    prompts = [encode_prompt(tok, p) for p in ("ROMEO:\n", "KING HENRY:\n", "First Citizen:\n")]
    ours = [list(generate_ids(lm, p, max_new_tokens=new_tokens, temperature=0)) for p in prompts]
    out = {}
    for label, model in variants:
        if label.startswith("gguf"):
            backend = LlamaCppBackend(resolve_model(model["id"], reg))
            same = 0
            for p, ref in zip(prompts, ours, strict=True):
                got = greedy(backend, p, new_tokens)
                same += next((i for i, (a, b) in enumerate(zip(got, ref, strict=False)) if a != b), min(len(got), len(ref)))
            out[label] = round(same / (new_tokens * len(prompts)), 3)  # tokens identical before the first difference
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-records", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        llmkit(ws, "data", "prepare", str(TEXT), "--name", "shakespeare", "--task", "lm", "--tokenizer", "bpe:2048",
               "--doc-split", "blank-line", "--pii", "keep", "--dedupe", "none")
        base = llmkit(ws, "train", "pretrain", "--data", "shakespeare", "--preset", "micro", "--context", "256",
                      "--batch-size", "8", "--max-steps", str(args.steps), "--lr", "1e-3", "--name", "micro")
        variants = [("fp32", base)]
        for method in ("int8-dynamic", "int8-weight", "int4-weight"):
            variants.append((method, llmkit(ws, "quantize", "micro", "--method", method, "--group-size", "64", "--no-table")))
        variants.append(("magnitude 50%", llmkit(ws, "prune", "micro", "--method", "magnitude", "--sparsity", "0.5", "--no-table")))
        variants.append(("wanda 50%", llmkit(ws, "prune", "micro", "--method", "wanda", "--sparsity", "0.5",
                                             "--calib-data", "shakespeare", "--no-table", "--name", "micro-wanda-50")))
        variants.append(("wanda 2:4", llmkit(ws, "prune", "micro", "--method", "wanda", "--pattern", "2:4",
                                             "--calib-data", "shakespeare", "--no-table", "--name", "micro-wanda-24")))
        for quant in ("f16", "q8_0", "q4_0"):
            variants.append((f"gguf {quant}", llmkit(ws, "export", "micro", "--format", "gguf", "--quant", quant, "--no-table")))
        rows = []
        for label, model in variants:
            quality = llmkit(ws, "eval", model["id"], "--data", "shakespeare", "--split", "val", "--max-examples", str(args.eval_records))
            speed = llmkit(ws, "bench-model", model["id"], "--prompt-tokens", "64", "--new-tokens", "64", "--runs", "3")
            rows.append({"variant": label, "size_mb": speed["metrics"]["size_mb"], "perplexity": quality["metrics"]["perplexity"],
                         "decode_tokens_per_s": speed["metrics"]["decode_tokens_per_s"], "backend": speed["metrics"].get("backend")})
        hf_speed = hf_generate_speed(Path(base["path"]))
        agreement = q4_agreement(ws, base, variants)
    ref = rows[0]
    print(f"{'variant':16}{'size MB':>9}{'x smaller':>10}{'perplexity':>12}{'Δ %':>8}{'decode tok/s':>14}  backend")
    for r in rows:
        r["smaller_x"] = round(ref["size_mb"] / r["size_mb"], 2)
        r["delta_ppl_pct"] = round(100 * (r["perplexity"] - ref["perplexity"]) / ref["perplexity"], 3)
        print(f"{r['variant']:16}{r['size_mb']:>9.2f}{r['smaller_x']:>10.2f}{r['perplexity']:>12.3f}{r['delta_ppl_pct']:>8.2f}"
              f"{r['decode_tokens_per_s']:>14.1f}  {r['backend']}")
    print(f"PyTorch fp32 HF generate: {hf_speed:.1f} tokens/s; greedy agreement with PyTorch over 128 tokens "
          f"(share before the first difference): {agreement}")
    by = {r["variant"]: r for r in rows}
    goals = {
        "int8_dynamic_delta_le_1pct_and_3.5x": abs(by["int8-dynamic"]["delta_ppl_pct"]) <= 1 and by["int8-dynamic"]["smaller_x"] >= 3.5,
        "int8_weight_delta_le_1pct_and_3.5x": abs(by["int8-weight"]["delta_ppl_pct"]) <= 1 and by["int8-weight"]["smaller_x"] >= 3.5,
        "int4_delta_le_5pct": abs(by["int4-weight"]["delta_ppl_pct"]) <= 5,
        "q4_0_delta_le_5pct": abs(by["gguf q4_0"]["delta_ppl_pct"]) <= 5,
        "wanda_below_magnitude": by["wanda 50%"]["perplexity"] < by["magnitude 50%"]["perplexity"],
        "q8_0_decode_ge_5x_hf": by["gguf q8_0"]["decode_tokens_per_s"] >= 5 * hf_speed,
    }
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")
    print(json.dumps({"rows": rows, "hf_generate_tokens_per_s": round(hf_speed, 1), "greedy_agreement": agreement,
                      "goals": goals, "steps": args.steps}))


if __name__ == "__main__":
    main()
