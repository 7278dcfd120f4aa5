"""Compression on a trained micro model (~11 M parameters) and on smollm2-135m: size, perplexity and speed.

Trains the micro preset on tiny shakespeare (byte-level BPE 2,048, context 256) for --steps steps,
then: fp32, int8-dynamic, int8-weight, int4-weight, magnitude 50 %, Wanda 50 %, Wanda 2:4, and GGUF
f16 / q8_0 / q4_0 — each through the llmkit command a user would run, perplexity on the same val
records (context 256, `llmkit eval`).

Speed: every variant on the runtime `llmkit bench-model` picks for it (llmkit's decode loop for PyTorch
models, llama.cpp for GGUF), plus Hugging Face `generate` (fp32, greedy, its KV cache) on the fp32
model, all through the same `measure_lm` in this process: same random 64-token prompt, 64 new
tokens, same threads, one untimed generation each first, then interleaved (each round runs every
backend once, in a rotated order, so a busy neighbour slows every row alike), median over --runs rounds. Every row has both rates:
decode-only (tokens after the first / time after the first token) and end to end (all new tokens /
whole call, prefill and set-up included).

Goals: int8 Δppl ≤ 1 % at ≥ 3.5× smaller; int4 and q4_0 Δppl ≤ 5 %; Wanda 50 % below magnitude 50 %;
GGUF q8_0 decode ≥ 5× Hugging Face fp32 generate (decode-only rates; the end-to-end ratio is reported
beside it).

Then the real model (issue 18 item 8): the built-in smollm2-135m in fp32, int8-weight and int4-weight
(groups of 32) and int8-dynamic (reported, no goal) by `llmkit quantize`, perplexity by `llmkit eval --source text` on the same val records with
its own tokenizer, and batch-1 decode on the torch backend (llmkit's decode loop; the quantized layers
on PyTorch's weight-only kernels), interleaved as above. Goals: int8-weight decode ≥ 1.5× and
int4-weight ≥ 1.3× the fp32 model's, Δppl ≤ 1 % (int8) and ≤ 5 % (int4). `--model micro|smollm2|both`
(default both; the smollm2 part adds about 10 minutes).

    .venv/bin/python bench/compress.py [--model both] [--steps N] [--keep DIR] [--runs 5] [--threads N]
    .venv/bin/python bench/compress.py --keep DIR --speed-only   # speed again on DIR's models

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def llmkit(ws: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "llmkit", *args, "--workspace", str(ws), "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"llmkit {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


class FirstTokenClock:
    """A `generate` streamer that only notes when the first new token arrives (its first put is the prompt)."""

    def __init__(self):
        self.puts, self.first = 0, None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class HFGenerate:
    """Hugging Face `generate` (fp32, greedy, its own KV cache) as a measure_lm backend: one call per
    generation, prefill and set-up inside it, the first new token timed by a streamer."""

    name = "hf generate"

    def __init__(self, model_dir: Path):
        from transformers import AutoModelForCausalLM
        from transformers.generation.streamers import BaseStreamer

        self.lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.vocab_size = self.lm.config.vocab_size
        self.max_len = self.lm.config.max_position_embeddings
        self.clock_type = type("Clock", (FirstTokenClock, BaseStreamer), {})

    def generate_greedy(self, ids: list[int], new_tokens: int) -> float:
        x = torch.tensor([ids])
        clock = self.clock_type()
        out = self.lm.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=False, pad_token_id=self.lm.config.pad_token_id or 0, streamer=clock)
        if out.shape[1] != len(ids) + new_tokens or clock.first is None:
            sys.exit(f"hf generate made {out.shape[1] - len(ids)} tokens, not {new_tokens}: the rows would not do the same work")
        return clock.first


def speed_rows(ws: Path, variants: list[dict], threads: int, rounds: int, prompt_tokens: int, new_tokens: int,
               hf_row: bool = True) -> list[dict]:
    """measure_lm on every variant's runtime (and on HF generate), interleaved round by round; medians over rounds."""
    import statistics

    from llmkit.eval.speed import disk_size_bytes, measure_lm
    from llmkit.models.io import resolve_model
    from llmkit.registry import Registry
    from llmkit.runtime.backends import load_backend

    torch.set_num_threads(threads)  # before loading: llama.cpp takes torch's thread count when it opens a model
    reg = Registry.for_workspace(ws)
    backends = []
    for v in variants:
        model = resolve_model(v["id"], reg)
        runtime = "llama.cpp" if (model.lineage or {}).get("format") == "gguf" else "torch"  # as bench-model picks
        backends.append((v["variant"], runtime, load_backend(runtime, model), disk_size_bytes(model) / 2**20))
    base = resolve_model(variants[0]["id"], reg)
    if hf_row:
        backends.append(("hf generate fp32", "transformers", HFGenerate(base.path), disk_size_bytes(base) / 2**20))
    for _, _, backend, _ in backends:  # one untimed generation each: allocator, kernel selection, weight layouts
        measure_lm(backend, prompt_tokens, new_tokens, runs=1, warmup=0, seed=0)
    runs: dict[str, list[dict]] = {label: [] for label, *_ in backends}
    for r in range(rounds):
        for label, _, backend, _ in backends[r % len(backends):] + backends[:r % len(backends)]:  # a new order each round
            runs[label].append(measure_lm(backend, prompt_tokens, new_tokens, runs=1, warmup=0, seed=0))
    rows = []
    for label, runtime, _, size_mb in backends:
        med = {k: statistics.median(m[k] for m in runs[label])
               for k in ("decode_tokens_per_s", "end_to_end_tokens_per_s", "prefill_tokens_per_s", "ttft_ms_p50")}
        rows.append({"variant": label, "backend": runtime, "size_mb": round(size_mb, 3),
                     "decode_tokens_per_s": round(med["decode_tokens_per_s"], 1),
                     "end_to_end_tokens_per_s": round(med["end_to_end_tokens_per_s"], 1),
                     "prefill_tokens_per_s": round(med["prefill_tokens_per_s"], 1), "ttft_ms": round(med["ttft_ms_p50"], 2),
                     "decode_tokens_per_s_runs": [round(m["decode_tokens_per_s"], 1) for m in runs[label]]})
    return rows


def q4_agreement(ws: Path, variants: list[dict], new_tokens: int = 128) -> dict[str, float]:
    """Share of 128 greedy tokens (after a few prompts) where each GGUF export agrees with PyTorch fp32."""
    from llmkit.generate import encode_prompt
    from llmkit.models.io import load_causal_lm, resolve_model
    from llmkit.registry import Registry
    from llmkit.runtime.decoder import generate_ids
    from llmkit.runtime.llama_cpp import LlamaCppBackend, greedy

    reg = Registry.for_workspace(ws)
    lm, tok = load_causal_lm(resolve_model(variants[0]["id"], reg))
    prompts = [encode_prompt(tok, p) for p in ("ROMEO:\n", "KING HENRY:\n", "First Citizen:\n")]
    ours = [list(generate_ids(lm, p, max_new_tokens=new_tokens, temperature=0)) for p in prompts]
    out = {}
    for v in variants:
        if v["variant"].startswith("gguf"):
            backend = LlamaCppBackend(resolve_model(v["id"], reg))
            same = 0
            for p, ref in zip(prompts, ours, strict=True):
                got = greedy(backend, p, new_tokens)
                same += next((i for i, (a, b) in enumerate(zip(got, ref, strict=False)) if a != b), min(len(got), len(ref)))
            out[v["variant"]] = round(same / (new_tokens * len(prompts)), 3)  # tokens identical before the first difference
    return out


def make_variants(ws: Path, steps: int, eval_records: int) -> list[dict]:
    """Train, compress and evaluate: [{variant, id, perplexity}], fp32 first."""
    llmkit(ws, "data", "prepare", str(TEXT), "--name", "shakespeare", "--task", "lm", "--tokenizer", "bpe:2048",
           "--doc-split", "blank-line", "--pii", "keep", "--dedupe", "none")
    base = llmkit(ws, "train", "pretrain", "--data", "shakespeare", "--preset", "micro", "--context", "256",
                  "--batch-size", "8", "--max-steps", str(steps), "--lr", "1e-3", "--name", "micro")
    made = [("fp32", base)]
    for method in ("int8-dynamic", "int8-weight", "int4-weight"):
        made.append((method, llmkit(ws, "quantize", "micro", "--method", method, *group_size(method, 64), "--no-table")))
    made.append(("magnitude 50%", llmkit(ws, "prune", "micro", "--method", "magnitude", "--sparsity", "0.5", "--no-table")))
    made.append(("wanda 50%", llmkit(ws, "prune", "micro", "--method", "wanda", "--sparsity", "0.5",
                                     "--calib-data", "shakespeare", "--no-table", "--name", "micro-wanda-50")))
    made.append(("wanda 2:4", llmkit(ws, "prune", "micro", "--method", "wanda", "--pattern", "2:4",
                                     "--calib-data", "shakespeare", "--no-table", "--name", "micro-wanda-24")))
    for quant in ("f16", "q8_0", "q4_0"):
        made.append((f"gguf {quant}", llmkit(ws, "export", "micro", "--format", "gguf", "--quant", quant, "--no-table")))
    variants = []
    for label, model in made:
        quality = llmkit(ws, "eval", model["id"], "--data", "shakespeare", "--split", "val", "--max-examples", str(eval_records))
        variants.append({"variant": label, "id": model["id"], "perplexity": quality["metrics"]["perplexity"]})
    return variants


def group_size(method: str, size: int) -> list[str]:
    """--group-size for the weight-only methods; int8-dynamic scales whole rows and refuses the flag."""
    return [] if method == "int8-dynamic" else ["--group-size", str(size)]


SMOLLM2_METHODS = ("int8-weight", "int4-weight", "int8-dynamic")  # int8-dynamic: reported, no goal


def make_smollm2_variants(ws: Path, eval_records: int) -> list[dict]:
    """The built-in smollm2-135m, quantized int8-weight and int4-weight (groups of 32) by `llmkit quantize`,
    perplexity by `llmkit eval` on the same val records (each model's own tokenizer, context 256)."""
    if not (ws / "compress-variants.json").exists():  # the micro part made the dataset; alone, make it here
        llmkit(ws, "data", "prepare", str(TEXT), "--name", "shakespeare", "--task", "lm", "--tokenizer", "bpe:2048",
               "--doc-split", "blank-line", "--pii", "keep", "--dedupe", "none")
    made = [("fp32", {"id": "smollm2-135m"})]
    for method in SMOLLM2_METHODS:
        # Groups of 32: the built-in's weights come from a Q4_1 GGUF (asymmetric, groups of 32), which int4 with
        # zero points in groups of 32 reproduces exactly; groups of 64 straddle two of its grids (+36 % perplexity).
        made.append((method, llmkit(ws, "quantize", "smollm2-135m", "--method", method, *group_size(method, 32), "--no-table",
                                    "--name", f"smollm2-{method}")))
    variants = []
    for label, model in made:
        quality = llmkit(ws, "eval", model["id"], "--data", "shakespeare", "--split", "val", "--source", "text",
                         "--context", "256", "--max-examples", str(eval_records))
        variants.append({"variant": label, "id": model["id"], "perplexity": quality["metrics"]["perplexity"]})
    return variants


def smollm2_part(args, ws: Path) -> dict:
    """smollm2-135m on the torch backend: fp32 against int8-weight and int4-weight, batch-1 decode and Δ perplexity."""
    saved = ws / "smollm2-variants.json"
    if args.speed_only and saved.exists():
        variants = json.loads(saved.read_text())
    else:
        variants = make_smollm2_variants(ws, args.smollm2_eval_records)
        saved.write_text(json.dumps(variants, indent=1))
    loadavg = os.getloadavg()
    speed = speed_rows(ws, variants, args.threads, args.runs, args.prompt_tokens, args.new_tokens, hf_row=False)
    rows = [{**v, **s} for v, s in zip(variants, speed, strict=True)]
    ref = rows[0]
    print(f"\nsmollm2-135m, torch backend (llmkit decode loop), batch 1, {args.threads} threads, median of {args.runs} rounds; "
          f"load average {loadavg[0]:.2f} before")
    print(f"{'variant':18}{'size MiB':>9}{'perplexity':>12}{'Δ %':>8}{'decode tok/s':>14}{'× fp32':>8}{'end-to-end':>12}")
    for r in rows:
        r["delta_ppl_pct"] = round(100 * (r["perplexity"] - ref["perplexity"]) / ref["perplexity"], 3)
        r["decode_vs_fp32"] = round(r["decode_tokens_per_s"] / ref["decode_tokens_per_s"], 2)
        r["end_to_end_vs_fp32"] = round(r["end_to_end_tokens_per_s"] / ref["end_to_end_tokens_per_s"], 2)
        print(f"{r['variant']:18}{r['size_mb']:>9.2f}{r['perplexity']:>12.3f}{r['delta_ppl_pct']:>8.2f}"
              f"{r['decode_tokens_per_s']:>14.1f}{r['decode_vs_fp32']:>8.2f}{r['end_to_end_tokens_per_s']:>12.1f}")
    by = {r["variant"]: r for r in rows}
    goals = {"int8_weight_decode_ge_1.5x_fp32": by["int8-weight"]["decode_vs_fp32"] >= 1.5,
             "int4_weight_decode_ge_1.3x_fp32": by["int4-weight"]["decode_vs_fp32"] >= 1.3,
             "int8_weight_delta_le_1pct": abs(by["int8-weight"]["delta_ppl_pct"]) <= 1,
             "int4_weight_delta_le_5pct": abs(by["int4-weight"]["delta_ppl_pct"]) <= 5}
    for goal, met in goals.items():
        print(f"goal smollm2 {goal}: {'met' if met else 'NOT met'}")
    return {"rows": rows, "goals": goals, "eval_records": args.smollm2_eval_records,
            "loadavg_before_speed": [round(x, 2) for x in loadavg]}


def micro_part(args, ws: Path, load: dict) -> dict:
    if args.speed_only:
        variants = json.loads((ws / "compress-variants.json").read_text())
    else:
        variants = make_variants(ws, args.steps, args.eval_records)
        (ws / "compress-variants.json").write_text(json.dumps(variants, indent=1))
    load["before_speed"] = os.getloadavg()
    speed = speed_rows(ws, variants, args.threads, args.runs, args.prompt_tokens, args.new_tokens)
    agreement = q4_agreement(ws, variants)
    rows = [{**v, **s} for v, s in zip(variants, speed, strict=False)]  # the variants, then HF generate alone
    ref, hf = rows[0], speed[-1]
    print(f"{'variant':18}{'size MiB':>9}{'x smaller':>10}{'perplexity':>12}{'Δ %':>8}{'decode tok/s':>14}{'end-to-end':>12}  runs on")
    for r in rows:
        r["smaller_x"] = round(ref["size_mb"] / r["size_mb"], 2)
        r["delta_ppl_pct"] = round(100 * (r["perplexity"] - ref["perplexity"]) / ref["perplexity"], 3)
        print(f"{r['variant']:18}{r['size_mb']:>9.2f}{r['smaller_x']:>10.2f}{r['perplexity']:>12.3f}{r['delta_ppl_pct']:>8.2f}"
              f"{r['decode_tokens_per_s']:>14.1f}{r['end_to_end_tokens_per_s']:>12.1f}  {r['backend']}")
    print(f"{hf['variant']:18}{hf['size_mb']:>9.2f}{'':>10}{'':>12}{'':>8}{hf['decode_tokens_per_s']:>14.1f}"
          f"{hf['end_to_end_tokens_per_s']:>12.1f}  {hf['backend']}")
    print(f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, {args.threads} threads, median of {args.runs} "
          f"interleaved rounds; load average {load['before_speed'][0]:.2f} before the speed part")
    by = {r["variant"]: r for r in rows}
    q8 = by["gguf q8_0"]
    ratios = {"q8_0_vs_hf_generate_decode": round(q8["decode_tokens_per_s"] / hf["decode_tokens_per_s"], 2),
              "q8_0_vs_hf_generate_end_to_end": round(q8["end_to_end_tokens_per_s"] / hf["end_to_end_tokens_per_s"], 2),
              "q8_0_vs_llmkit_fp32_decode": round(q8["decode_tokens_per_s"] / ref["decode_tokens_per_s"], 2),
              "q8_0_vs_llmkit_fp32_end_to_end": round(q8["end_to_end_tokens_per_s"] / ref["end_to_end_tokens_per_s"], 2),
              "llmkit_fp32_vs_hf_generate_decode": round(ref["decode_tokens_per_s"] / hf["decode_tokens_per_s"], 2)}
    print("ratios: " + ", ".join(f"{k} {v}x" for k, v in ratios.items()))
    print(f"greedy agreement with PyTorch over 128 tokens (share before the first difference): {agreement}")
    goals = {
        "int8_dynamic_delta_le_1pct_and_3.5x": abs(by["int8-dynamic"]["delta_ppl_pct"]) <= 1 and by["int8-dynamic"]["smaller_x"] >= 3.5,
        "int8_weight_delta_le_1pct_and_3.5x": abs(by["int8-weight"]["delta_ppl_pct"]) <= 1 and by["int8-weight"]["smaller_x"] >= 3.5,
        "int4_delta_le_5pct": abs(by["int4-weight"]["delta_ppl_pct"]) <= 5,
        "q4_0_delta_le_5pct": abs(by["gguf q4_0"]["delta_ppl_pct"]) <= 5,
        "wanda_below_magnitude": by["wanda 50%"]["perplexity"] < by["magnitude 50%"]["perplexity"],
        "q8_0_decode_ge_5x_hf_generate_decode": ratios["q8_0_vs_hf_generate_decode"] >= 5,
    }
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'NOT met'}")
    return {"rows": rows, "hf_generate": hf, "ratios": ratios, "greedy_agreement": agreement, "goals": goals,
            "steps": args.steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("micro", "smollm2", "both"), default="both",
                    help="the micro model's full table, smollm2-135m's torch quantization rows, or both")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval-records", type=int, default=200)
    ap.add_argument("--smollm2-eval-records", type=int, default=100)
    ap.add_argument("--keep", type=Path, help="workspace folder to keep (and reuse with --speed-only)")
    ap.add_argument("--speed-only", action="store_true", help="only the speed part, on the models kept in --keep")
    ap.add_argument("--runs", type=int, default=5, help="interleaved rounds; figures are medians over them")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap.add_argument("--threads", type=int, default=cores)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    if args.speed_only and not (args.keep and any((args.keep / f).exists() for f in ("compress-variants.json",
                                                                                     "smollm2-variants.json"))):
        sys.exit("--speed-only needs --keep DIR of an earlier full run (DIR/compress-variants.json)")
    load = {"start": os.getloadavg()}
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        ws = args.keep or Path(tmp) / "ws"
        if args.model in ("micro", "both"):
            out = micro_part(args, ws, load)
        if args.model in ("smollm2", "both"):
            out["smollm2"] = smollm2_part(args, ws)
    load["end"] = os.getloadavg()
    out.update({"model": args.model, "threads": args.threads, "prompt_tokens": args.prompt_tokens,
                "new_tokens": args.new_tokens, "rounds": args.runs, "speed_only": args.speed_only,
                "loadavg": {k: [round(x, 2) for x in v] for k, v in load.items()}})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
