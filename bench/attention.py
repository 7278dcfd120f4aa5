"""Training attention on this CPU: llmkit's bf16 attention (models.attention) against PyTorch's own
F.scaled_dot_product_attention (its CPU flash kernel), at smollm2-135m's head layout (9 query heads, 3
key/value heads of 64) over several lengths, batch x length = 1,024 tokens as in bench/lora_real.py.

Two measurements, each giving both sides the same inputs, threads and timing window:

  kernel: forward + backward of the attention alone on the same bf16 inputs and output gradient; median
      over --repeats after --warmup untimed runs, the sides alternating within each repeat. Each side's
      error is its largest deviation from an fp64 computation on the same inputs, relative to the largest
      value (output and the three gradients): the speed must not come from worse arithmetic. Run in a child
      process whose glibc keeps freed memory in its heap (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_
      fixed), as it stays inside a training step: a loop of lone attention calls would otherwise hand the
      heap back after every call and time fresh-page faults (ours allocates whole score matrices, so it
      pays more of them).
  step: whole LoRA SFT steps of smollm2-135m (r 8 all-linear, bf16 autocast, the fast path, eager) with
      glibc's defaults, our attention on or off (MAX_SCORES 0) in alternate steps of one process: median
      step seconds per side over --steps steps each; rows of one conversation, and at 256 tokens also rows
      packed with three (`train sft --packing`: attention within each conversation).

`--ours fp32-flash` measures instead what bf16 attention is on a CPU without bf16 instructions (`_Fp32Flash`:
PyTorch's flash kernel in fp32 on the bf16 values) against the same bf16 kernel.

    .venv/bin/python bench/attention.py [--threads 2] [--repeats 20] [--steps 6] [--ours bf16-gemm|fp32-flash]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from llmkit.models import attention as attention_module
from llmkit.models.cpu_features import cpu_has_fast_bf16

H, KV, D, TOKENS = 9, 3, 64, 1024
OURS_FAST_BF16 = True  # ours: the batched-GEMM kernel (True) or the fp32 flash kernel (False, --ours fp32-flash)


def _ours_kernel(on: bool) -> None:
    """attention() takes ours (on) or PyTorch's bf16 kernel (off: MAX_SCORES 0 sends it there)."""
    attention_module.cpu_has_fast_bf16 = (lambda: OURS_FAST_BF16) if on else (lambda: True)
    attention_module.MAX_SCORES = MAX_SCORES if on else 0


MAX_SCORES = attention_module.MAX_SCORES


def timed(fn, q, k, v, do) -> float:
    for t in (q, k, v):
        t.grad = None
    start = time.perf_counter()
    fn(q, k, v).backward(do)
    return time.perf_counter() - start


def max_rel_error(fn, q, k, v, do, exact) -> float:
    for t in (q, k, v):
        t.grad = None
    o = fn(q, k, v)
    o.backward(do)
    return max(float((got.double() - want).abs().max() / want.abs().max())
               for got, want in zip((o, q.grad, k.grad, v.grad), exact, strict=True))


def kernel_rows(repeats: int, warmup: int) -> list[dict]:
    def pytorch(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def ours(q, k, v):
        _ours_kernel(True)
        return attention_module.attention(q, k, v)

    rows = []
    for T in (128, 256, 512, 1024):
        B = TOKENS // T
        g = torch.Generator().manual_seed(T)
        q, k, v = (torch.randn(B, n, T, D, generator=g).bfloat16().requires_grad_() for n in (H, KV, KV))
        do = torch.randn(B, H, T, D, generator=g).bfloat16()
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        o64 = pytorch(q64, k64, v64)
        o64.backward(do.double())
        exact = (o64.detach(), q64.grad, k64.grad, v64.grad)
        for _ in range(warmup):
            timed(pytorch, q, k, v, do), timed(ours, q, k, v, do)
        times = {"pytorch": [], "ours": []}
        for i in range(repeats):
            for name, fn in ((("pytorch", pytorch), ("ours", ours)) if i % 2 == 0 else (("ours", ours), ("pytorch", pytorch))):
                times[name].append(timed(fn, q, k, v, do))
        row = {"length": T, "batch": B, "pytorch_ms": statistics.median(times["pytorch"]) * 1e3,
               "ours_ms": statistics.median(times["ours"]) * 1e3,
               "pytorch_max_rel_error": max_rel_error(pytorch, q, k, v, do, exact),
               "ours_max_rel_error": max_rel_error(ours, q, k, v, do, exact)}
        row["speedup"] = row["pytorch_ms"] / row["ours_ms"]
        rows.append(row)
    return rows


def step_rows(steps: int) -> list[dict]:
    from llmkit.config import LoraConfig, SftConfig
    from llmkit.models.io import resolve_model
    from llmkit.train import fast_lora
    from llmkit.train.optim import adamw

    base = resolve_model("smollm2-135m")
    cfg = SftConfig(base="smollm2-135m", method="lora", lora=LoraConfig(r=8, alpha=16, dropout=0.0), seed=1)
    model = fast_lora.load_fast(base, cfg, "bf16", "cpu").train()
    optimizer = adamw(model, 2e-4, 0.01, (0.9, 0.999), "cpu")
    rows = []
    for T, packed in ((256, False), (256, True), (512, False), (1024, False)):
        B = TOKENS // T
        ids = torch.randint(0, model.lm_head.weight.shape[0], (B, T), generator=torch.Generator().manual_seed(T))
        labels = ids.clone()
        labels[:, : T // 3] = -100  # a prompt, unlabelled
        batch = {"input_ids": ids, "labels": labels}
        if packed:  # three conversations per row (train sft --packing): attention within each only
            third = T // 3
            batch["position_ids"] = torch.cat([torch.arange(third), torch.arange(third), torch.arange(T - 2 * third)]).expand(B, T)

        def step(side: str, batch=batch) -> float:
            _ours_kernel(side == "ours")
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                total, n = fast_lora.token_loss_sum(model, batch)
            (total / n).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        for side in ("ours", "pytorch", "ours", "pytorch"):  # warm-up
            step(side)
        times = {"ours": [], "pytorch": []}
        for i in range(steps):
            for side in (("ours", "pytorch") if i % 2 == 0 else ("pytorch", "ours")):
                times[side].append(step(side))
        row = {"length": T, "batch": B, "packed": packed, "pytorch_step_s": statistics.median(times["pytorch"]),
               "ours_step_s": statistics.median(times["ours"])}
        row["speedup"] = row["pytorch_step_s"] / row["ours_step_s"]
        rows.append(row)
    _ours_kernel(True)
    return rows


def rounded(rows: list[dict]) -> list[dict]:
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--ours", choices=["bf16-gemm", "fp32-flash"], default="bf16-gemm",
                    help="our kernel for CPUs with bf16 instructions, or the fp32 flash kernel for CPUs without")
    ap.add_argument("--kernel-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    global OURS_FAST_BF16
    OURS_FAST_BF16 = args.ours == "bf16-gemm"
    torch.set_num_threads(args.threads)
    _ours_kernel(True)  # measured whatever the CPU
    if args.kernel_only:
        print(json.dumps(kernel_rows(args.repeats, args.warmup)))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 30), MALLOC_TRIM_THRESHOLD_=str(1 << 32))
    child = subprocess.run([sys.executable, __file__, "--kernel-only", "--threads", str(args.threads), "--repeats",
                            str(args.repeats), "--warmup", str(args.warmup), "--ours", args.ours], env=env, check=True, capture_output=True, text=True)
    kernel = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"kernel, forward + backward: {'length':>6} {'batch':>5} {'pytorch ms':>11} {'ours ms':>8} {'speed-up':>9} {'err pytorch':>12} {'err ours':>9}")
    for r in kernel:
        print(f"{'':28}{r['length']:>6} {r['batch']:>5} {r['pytorch_ms']:>11.2f} {r['ours_ms']:>8.2f} {r['speedup']:>8.2f}x "
              f"{r['pytorch_max_rel_error']:>12.4f} {r['ours_max_rel_error']:>9.4f}")
    steps = step_rows(args.steps)
    print(f"LoRA step of smollm2-135m:  {'length':>6} {'batch':>5} {'packed':>7} {'pytorch s':>10} {'ours s':>7} {'speed-up':>9}")
    for r in steps:
        print(f"{'':28}{r['length']:>6} {r['batch']:>5} {str(r['packed']):>7} {r['pytorch_step_s']:>10.3f} {r['ours_step_s']:>7.3f} "
              f"{r['speedup']:>8.2f}x")
    print(json.dumps({"heads": H, "kv_heads": KV, "head_dim": D, "tokens": TOKENS, "threads": args.threads,
                      "cpu_has_fast_bf16": cpu_has_fast_bf16(), "ours": args.ours, "max_scores": attention_module.MAX_SCORES,
                      "kernel": rounded(kernel), "lora_step": rounded(steps)}))


if __name__ == "__main__":
    main()
