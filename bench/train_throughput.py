"""Training throughput of the micro preset (context 256, batch 8): llmkit's loop with its best settings
against two hand-written loops over transformers' LlamaForCausalLM, in the same run, from the same
initial weights, on the same batches, with the same schedule and threads:

  (a) "engineering": the reference with llmkit's settings — the same precision (bf16 autocast when
      llmkit picks it), the same compile setting, the same optimizer (llmkit's AdamW, fused, same
      groups and hyper-parameters). The ratio is what llmkit's own model and loop are worth.
  (b) "plain": fp32, eager, for-loop AdamW — what a user starting from scratch writes. The ratio
      also carries precision and compilation.

Every loop is timed the same way: wall time from the end of one optimizer step to the end of the
next (batch drawing, forward, backward, clipping, step); the first WARMUP steps (compilation is in
the first) are excluded on every side, and the compile time (first step minus a steady step) is
reported apart (the first step's extra time). tokens/s = tokens per step / median step time. --rounds N runs the three loops N
times in alternating order (abc, cba, ...) and takes per-loop medians over rounds.

The losses must agree step by step (same batches) within a stated tolerance, or the bench exits 1:
0.1 % fp32 vs fp32, 1 % bf16 vs bf16 (two implementations round differently), 2 % bf16 vs fp32.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--no-compile] [--rounds 1] [--threads N]

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CONTEXT, BATCH, WARMUP = 256, 8, 3
# Largest relative loss difference allowed at any step, by the pair of precisions compared.
LOSS_TOLERANCE = {("fp32", "fp32"): 0.001, ("bf16", "bf16"): 0.01, ("bf16", "fp32"): 0.02, ("fp32", "bf16"): 0.02}


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def flops_per_token(cfg, params: int) -> float:
    # 6N for the weights' forward+backward, plus attention scores and values (PaLM appendix B).
    return 6 * params + 12 * cfg.num_hidden_layers * cfg.hidden_size * CONTEXT


def reference_loop(cfg, init_state, shard, vocab, steps, lr, seed, precision: str, compile: bool,
                   llmkit_optimizer: bool) -> dict:
    """A hand-written loop over HF's model: warm-up+cosine, clipping, AdamW (llmkit's fused one, or
    the for-loop one a user gets by writing it out), fp32 or bf16 autocast, eager or compiled."""
    from transformers import LlamaForCausalLM

    from llmkit.train.batches import TokenWindows
    from llmkit.train.optim import adamw, autocast, lr_at

    model = LlamaForCausalLM(cfg)
    model.load_state_dict(init_state, strict=False)
    model.tie_weights()
    model.train()
    if llmkit_optimizer:
        opt = adamw(model, lr, 0.1, (0.9, 0.99), "cpu")  # the very function pretrain() calls, same arguments
    else:
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=lr, betas=(0.9, 0.99), foreach=False)
    forward = torch.compile(model) if compile else model
    windows = TokenWindows(shard, vocab, CONTEXT)
    gen = torch.Generator().manual_seed(seed)
    losses, times = [], []
    last = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr, lr / 10, 5, steps)
        x, y = windows.random_batch(BATCH, gen)
        with autocast(precision, "cpu"):
            logits = forward(input_ids=x).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return {"losses": losses, "times": times}


def llmkit_loop(ws, reg, steps, lr, seed, compile: bool) -> dict:
    from llmkit.config import PretrainConfig
    from llmkit.train.pretraining import pretrain

    cfg = PretrainConfig(data="shakespeare", preset="micro", context=CONTEXT, batch_size=BATCH, max_steps=steps, lr=lr,
                         min_lr=lr / 10, warmup_steps=5, eval_every=10**6, checkpoint_every=10**6, eval_max_batches=1,
                         seed=seed, compile=compile, name="throughput")
    model = pretrain(cfg, ws, reg)
    rows = [json.loads(line) for line in (Path(model.lineage["run"]["path"]) / "metrics.jsonl").read_text().splitlines()]
    steps_rows = [r for r in rows if "loss" in r]
    # pretrain() logs tokens/s of each step, timed from the end of the previous step: the same window as above.
    return {"losses": [r["loss"] for r in steps_rows], "times": [BATCH * CONTEXT / r["tokens_per_s"] for r in steps_rows],
            "precision": model.lineage["metrics"]["precision"]}


def summary(run: dict) -> dict:
    steady = statistics.median(run["times"][WARMUP:])
    # The first step's extra time is the compilation when compiled (allocator and kernel warm-up otherwise).
    return {"tok_s": BATCH * CONTEXT / steady, "step_s": steady, "first_step_s": run["times"][0],
            "first_step_extra_s": max(0.0, run["times"][0] - steady)}


def loss_check(name: str, ours: list[float], ref: list[float], pair: tuple[str, str]) -> dict:
    diffs = [abs(a - b) / abs(b) for a, b in zip(ours, ref, strict=True)]
    tol = LOSS_TOLERANCE[pair]
    return {"pair": name, "precisions": f"{pair[0]} vs {pair[1]}", "max_rel_diff": round(max(diffs), 6),
            "final_rel_diff": round(diffs[-1], 6), "tolerance": tol, "agree": max(diffs) <= tol}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)  # best settings: compiled
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rounds", type=int, default=1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ap.add_argument("--threads", type=int, default=cores)
    args = ap.parse_args()
    if args.steps <= WARMUP + 1:
        sys.exit(f"--steps must be above {WARMUP + 1}: the first {WARMUP} steps are not timed")
    torch.set_num_threads(args.threads)

    from llmkit.config import DataConfig
    from llmkit.data.pipeline import prepare
    from llmkit.models.llama import Llama
    from llmkit.models.presets import count_parameters, llama_config
    from llmkit.registry import Registry
    from llmkit.train.optim import cpu_has_fast_bf16, resolve_precision
    from llmkit.workspace import Workspace

    load = {"start": os.getloadavg()}
    precision = resolve_precision("auto", "cpu")  # what pretrain() will pick (it records it; checked below)
    runs: dict[str, list[dict]] = {"plain": [], "engineering": [], "llmkit": []}
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp))
        reg = Registry.for_workspace(ws.root)
        ds = prepare(DataConfig(inputs=[str(TEXT)], name="shakespeare", task="lm", tokenizer="bpe:4096", pii="keep",
                                dedupe="none"), ws, reg)
        vocab = ds.manifest["tokenizer"]["vocab_size"]
        shard = ds.path / "shards" / "train.bin"
        cfg = llama_config("micro", vocab, CONTEXT, bos_token_id=0, eos_token_id=0, pad_token_id=1)
        seed = 1337
        torch.manual_seed(seed)
        init = Llama(cfg)  # pretrain() builds its model the same way from the same seed
        params = count_parameters(init)
        init_state = init.hf_state_dict()
        arms = {
            "plain": lambda: reference_loop(cfg, init_state, shard, vocab, args.steps, args.lr, seed, "fp32", False, False),
            "engineering": lambda: reference_loop(cfg, init_state, shard, vocab, args.steps, args.lr, seed, precision,
                                                  args.compile, True),
            "llmkit": lambda: llmkit_loop(ws, reg, args.steps, args.lr, seed, args.compile),
        }
        order = list(arms)
        for r in range(args.rounds):
            load[f"before_round_{r + 1}"] = os.getloadavg()
            for name in order if r % 2 == 0 else order[::-1]:  # abc, cba: drift in the machine's load hits all alike
                t = time.perf_counter()
                runs[name].append(arms[name]())
                print(f"round {r + 1}: {name} loop done in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
    if runs["llmkit"][0]["precision"] != precision:
        sys.exit(f"pretrain() trained in {runs['llmkit'][0]['precision']}, the engineering reference in {precision}")

    figures_by = {name: [summary(run) for run in rs] for name, rs in runs.items()}
    tok_s = {name: statistics.median(f["tok_s"] for f in fs) for name, fs in figures_by.items()}
    ratio_rounds = {ref: [round(o["tok_s"] / b["tok_s"], 3) for o, b in zip(figures_by["llmkit"], figures_by[ref], strict=True)]
                    for ref in ("engineering", "plain")}
    losses = {name: rs[0]["losses"] for name, rs in runs.items()}  # every round draws the same batches: round 1 speaks for all
    checks = [loss_check("llmkit vs engineering", losses["llmkit"], losses["engineering"], (precision, precision)),
              loss_check("llmkit vs plain", losses["llmkit"], losses["plain"], (precision, "fp32"))]
    tokens = BATCH * CONTEXT
    fpt = flops_per_token(cfg, params)
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    load["end"] = os.getloadavg()
    figures = {
        "params": params, "steps": args.steps, "timed_steps": args.steps - WARMUP, "tokens_per_step": tokens,
        "precision": precision, "compile": args.compile, "threads": args.threads, "rounds": args.rounds,
        "bf16_fast_cpu": cpu_has_fast_bf16(),
        "llmkit_tok_s": round(tok_s["llmkit"], 1),
        "engineering_tok_s": round(tok_s["engineering"], 1), "plain_tok_s": round(tok_s["plain"], 1),
        "ratio_vs_engineering": round(tok_s["llmkit"] / tok_s["engineering"], 3),
        "ratio_vs_plain": round(tok_s["llmkit"] / tok_s["plain"], 3),
        "ratio_vs_engineering_rounds": ratio_rounds["engineering"], "ratio_vs_plain_rounds": ratio_rounds["plain"],
        "first_step_extra_s": {name: [round(f["first_step_extra_s"], 2) for f in fs] for name, fs in figures_by.items()},
        "first_step_s": {name: [round(f["first_step_s"], 2) for f in fs] for name, fs in figures_by.items()},
        "final_loss": {name: round(ls[-1], 4) for name, ls in losses.items()},
        "loss_checks": checks,
        "matmul_peak_fp32_gflops": round(peak32 / 1e9, 1), "matmul_peak_bf16_gflops": round(peak16 / 1e9, 1),
        "llmkit_mfu_fp32": round(tok_s["llmkit"] * fpt / peak32, 4),
        "llmkit_mfu_bf16": round(tok_s["llmkit"] * fpt / peak16, 4) if precision == "bf16" else None,
        "engineering_mfu_fp32": round(tok_s["engineering"] * fpt / peak32, 4),
        "plain_mfu_fp32": round(tok_s["plain"] * fpt / peak32, 4),
        "loadavg": {k: [round(x, 2) for x in v] for k, v in load.items()},
    }
    compiled = ", compiled" if args.compile else ", eager"
    print(f"micro preset ({params / 1e6:.1f}M), context {CONTEXT}, batch {BATCH}, {args.steps} steps ({WARMUP} untimed), "
          f"{args.threads} threads, {args.rounds} round(s); load average {load['start'][0]:.2f} at the start")
    print(f"{'':40s}{'tok/s':>10s}{'final loss':>12s}{'1st step extra s':>18s}")
    for name, label in (("plain", "plain reference (fp32, eager, for-loop)"),
                        ("engineering", f"engineering reference ({precision}{compiled})"),
                        ("llmkit", f"llmkit ({precision}{compiled})")):
        print(f"{label:40s}{tok_s[name]:10.0f}{losses[name][-1]:12.4f}{figures_by[name][0]['first_step_extra_s']:18.1f}")
    print(f"ratio vs engineering {figures['ratio_vs_engineering']:.2f}x (the model and loop); vs plain "
          f"{figures['ratio_vs_plain']:.2f}x (goal >= 2.0: {'met' if figures['ratio_vs_plain'] >= 2 else 'NOT met'})")
    for c in checks:
        print(f"losses {c['pair']} ({c['precisions']}): max {100 * c['max_rel_diff']:.3f}% over steps, "
              f"tolerance {100 * c['tolerance']:.1f}%: {'agree' if c['agree'] else 'DO NOT AGREE'}")
    print(f"matmul peak fp32 {figures['matmul_peak_fp32_gflops']} GFLOP/s, bf16 {figures['matmul_peak_bf16_gflops']} GFLOP/s; "
          f"llmkit MFU {100 * figures['llmkit_mfu_fp32']:.1f}% of fp32 peak"
          + (f", {100 * figures['llmkit_mfu_bf16']:.1f}% of bf16 peak" if precision == "bf16" else ""))
    print(json.dumps(figures))
    bad = [c for c in checks if not c["agree"]]
    if bad:
        sys.exit("losses do not agree: " + "; ".join(f"{c['pair']} differ by up to {100 * c['max_rel_diff']:.3f}% "
                                                      f"(tolerance {100 * c['tolerance']:.1f}% for {c['precisions']})" for c in bad)
                 + ": the loops do not train the same model, so their speeds cannot be compared")


if __name__ == "__main__":
    main()
