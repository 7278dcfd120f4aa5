"""Batch-1 greedy decode speed: llmkit's generate_ids against Hugging Face's model.generate().

Why: llmkit's decode loop exists to be faster than HF's on the small models it trains (goal: 2x on
the micro preset). Both run the same random-init micro model (vocab 4096, context 512, fp32) from the
same 12-token prompt for exactly 128 new tokens (timed end to end, prefill included), warmed up,
best of 3 runs interleaved between the two (so a noisy neighbour hurts both alike); the tokens
must match.

    .venv/bin/python bench/generate_speed.py [--runs 3] [--new 128] [--threads N]

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from transformers import LlamaForCausalLM

from llmkit.models.presets import count_parameters, llama_config
from llmkit.runtime.decoder import generate_ids


def timed(fn) -> tuple[float, list[int]]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new", type=int, default=128)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap.add_argument("--threads", type=int, default=cores)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("micro", 4096, 512)).eval()
    prompt = torch.randint(0, 4096, (12,)).tolist()
    n = args.new

    def ours():
        return list(generate_ids(model, prompt, max_new_tokens=n, temperature=0))

    def hf():
        x = torch.tensor([prompt])
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    hf(), ours()  # warm-up: allocator, MKL kernel selection, our decoder's weight layout
    hf_times, our_times = [], []
    for _ in range(args.runs):
        seconds, hf_ids = timed(hf)
        hf_times.append(seconds)
        seconds, our_ids = timed(ours)
        our_times.append(seconds)

    rows = []
    for name, times in (("hf generate", hf_times), ("llmkit generate_ids", our_times)):
        rows.append((name, n / min(times), n / statistics.median(times)))
    print(f"micro preset: {count_parameters(model) / 1e6:.1f}M params, fp32, batch 1, "
          f"{len(prompt)}-token prompt, {n} new tokens, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'':22}{'best tok/s':>12}{'median tok/s':>14}")
    for name, best, med in rows:
        print(f"{name:22}{best:12.1f}{med:14.1f}")
    hf_tok_s, our_tok_s = rows[0][1], rows[1][1]
    same = our_ids == hf_ids
    median_ratio = rows[1][2] / rows[0][2]
    print(f"ratio: {our_tok_s / hf_tok_s:.2f}x best, {median_ratio:.2f}x median   same tokens: {same}")
    print(json.dumps({"llmkit_tok_s": round(our_tok_s, 1), "hf_tok_s": round(hf_tok_s, 1),
                      "ratio": round(our_tok_s / hf_tok_s, 2), "ratio_median": round(median_ratio, 2),
                      "same_tokens": same, "new_tokens": n, "threads": args.threads}))


if __name__ == "__main__":
    main()
