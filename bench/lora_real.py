"""LoRA SFT of the real smollm2-135m: llmkit's fast path against a plain transformers + peft loop.

Both sides train the same job: SmolLM2-135M-Instruct, LoRA r 8 (alpha 16, no dropout) on every linear
projection, bf16 autocast (or fp32 with --precision fp32, both sides), batch 4 x 256 tokens of instruct_small conversations (rendered with the
base's chat template, loss on assistant tokens, packed into full rows: every step has the same shape),
the same rows in the same order, AdamW (llmkit's `adamw`: same groups, decay and betas) at a constant
lr, gradient clipping at 1.0, the same torch threads. The adapters start equal (same seed; llmkit
creates them as peft does). Each side runs in its own process, so each peak RSS (getrusage maxrss of
that process: loading included) is its own; both run with glibc's default allocator settings, or both with
`train sft --lean-memory`'s (mmap threshold fixed at 256 KiB: train/memory.py) under --lean-memory. Our side handles
memory as llmkit's training loop does: blocks of 4 MiB and more in their own mappings (train.memory.map_large_blocks),
and train.memory.Releaser handing the heap's free pages back (glibc's malloc_trim) after a long step while that costs
at most a tenth of a step; a plain loop does neither, so the peer does not, unless --release-both (the peer's loop
given the same handling: what it is worth to a plain loop). The first --warmup steps are
excluded from the timing on both sides; tokens/s = tokens / seconds over the timed steps.

    ours: train.fast_lora.load_fast (our Llama, fused projections, frozen base in the precision, LoRA on top)
          + train.fast_lora.token_loss_sum (chunked cross-entropy over labelled positions)
    peer: AutoModelForCausalLM (fp32 weights, as loaded) + peft.get_peft_model, loss from `labels=`

    flock /tmp/llmkit-bench.lock .venv/bin/python bench/lora_real.py [--precision bf16|fp32] [--steps 12] [--warmup 2]
        [--lean-memory] [--release-both] [--compile] [--rounds N]

Goals (issue 18): tokens/s >= 2x the peer's, peak RSS <= 0.7x the peer's, losses within 2 % step by step.
The last line is one JSON object with the figures and, per goal, whether it was met.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "instruct_small"
BATCH, LENGTH, LR, SEED = 4, 256, 2e-4, 1337


def make_rows(ws: Path, rows_file: Path, count: int) -> dict:
    """instruct_small as packed rows of the model's own tokens, saved for both sides."""
    import torch
    from safetensors.torch import save_file

    from llmkit.config import DataConfig
    from llmkit.data import prepare
    from llmkit.models.io import load_tokenizer_for, resolve_model
    from llmkit.registry import Registry
    from llmkit.train.supervised import encode_split, pack, shuffled_batches
    from llmkit.workspace import Workspace

    workspace = Workspace.open(ws)
    registry = Registry.for_workspace(workspace.root)
    ds = prepare(DataConfig(inputs=[str(DATA)], name="chats", task="chat", tokenizer="char", skip_bad=True), workspace, registry)
    tokenizer = load_tokenizer_for(resolve_model("smollm2-135m"))
    examples, _ = encode_split(tokenizer, ds.records("train"), LENGTH, True, "train")
    rows = [r for r in pack(examples, LENGTH) if len(r.ids) == LENGTH]
    order = shuffled_batches(rows, 1, SEED, 0, lambda xs: xs[0])[:count]
    if len(order) < count:
        raise SystemExit(f"instruct_small packs into {len(order)} full rows; {count} needed")
    ids = torch.tensor([r.ids for r in order])
    labels = torch.tensor([r.labels for r in order])
    save_file({"ids": ids, "labels": labels}, str(rows_file))
    return {"rows": len(rows), "labelled_fraction": round(float((labels[:, 1:] != -100).float().mean()), 3)}


def side(name: str, rows_file: Path, steps: int, warmup: int, threads: int, compile_model: bool, precision: str,
         release: bool) -> None:
    """One side's training, in this process; prints one JSON line."""
    import torch
    from safetensors.torch import load_file

    from llmkit.models.io import resolve_model
    from llmkit.train.memory import Releaser, map_large_blocks
    from llmkit.train.optim import adamw

    torch.set_num_threads(threads)
    data = load_file(str(rows_file))
    base = resolve_model("smollm2-135m")
    started = time.perf_counter()
    model, loss_of = ours(base, precision) if name == "ours" else peer(base)
    load_s = time.perf_counter() - started
    if compile_model:  # our side: each block compiled, as `train sft --compile` does
        from llmkit.train.fast_lora import compile_blocks

        model = compile_blocks(model)
    model.train()
    optimizer = adamw(model, LR, 0.01, (0.9, 0.999), "cpu")
    trained = [p for p in model.parameters() if p.requires_grad]
    losses, seconds = [], []
    releaser = Releaser(threads)
    if release:  # as train/loop.py's fit does
        map_large_blocks()
    for step in range(steps):
        ids, labels = data["ids"][step * BATCH:(step + 1) * BATCH], data["labels"][step * BATCH:(step + 1) * BATCH]
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_of(model, ids, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if release:  # as train/loop.py's fit does (timed too)
            releaser.after_step(time.perf_counter() - t0)
        seconds.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    timed = seconds[warmup:]
    print(json.dumps({"side": name, "losses": losses, "step_s": seconds, "load_s": round(load_s, 2),
                      "tokens_per_s": BATCH * LENGTH * len(timed) / sum(timed),
                      "trainable": sum(p.numel() for p in trained), "releases": releaser.released,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def ours(base, precision: str):
    from llmkit.config import LoraConfig, SftConfig
    from llmkit.train import fast_lora

    cfg = SftConfig(base="smollm2-135m", method="lora", lora=LoraConfig(r=8, alpha=16, dropout=0.0), seed=SEED)
    reason = fast_lora.fast_path_reason(base, cfg)
    if reason:
        raise SystemExit(f"the fast path refused smollm2-135m: {reason}")
    model = fast_lora.load_fast(base, cfg, precision, "cpu")

    def loss_of(model, ids, labels):
        total, n = fast_lora.token_loss_sum(model, {"input_ids": ids, "labels": labels})
        return total / n

    return model, loss_of


def peer(base):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base.path), use_safetensors=True)
    torch.manual_seed(SEED)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM", bias="none"))

    def loss_of(model, ids, labels):
        return model(input_ids=ids, labels=labels).loss

    return model, loss_of


def run_side(name: str, rows_file: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--side", name, "--rows", str(rows_file), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads), "--precision", args.precision] + (["--compile"] if args.compile and name == "ours" else []) \
        + (["--release"] if name == "ours" or args.release_both else [])  # llmkit's loop's memory handling
    env = dict(os.environ)
    if args.lean_memory:  # both sides: ours through glibc's environment variable too, set before Python starts
        from llmkit.train.memory import LEAN_THRESHOLD

        env["MALLOC_MMAP_THRESHOLD_"] = str(LEAN_THRESHOLD)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median_side(runs: list[dict]) -> dict:
    """One side's rounds as one: the median round by tokens/s (its step times and losses), the median peak RSS."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    rss = sorted(r["peak_rss_mb"] for r in runs)
    mid["peak_rss_mb"] = rss[(len(rss) - 1) // 2]
    return mid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="bf16 autocast (the issue's setting) or fp32")
    ap.add_argument("--lean-memory", action="store_true", help="both sides with train sft --lean-memory's allocator setting")
    ap.add_argument("--compile", action="store_true", help="torch.compile our side's blocks (train sft --compile)")
    ap.add_argument("--release-both", action="store_true", help="the peer's loop handles memory as ours does (large blocks mapped, freed heap pages handed back after long steps)")
    ap.add_argument("--rounds", type=int, default=1, help="run the two sides in turn this many times; medians reported")
    ap.add_argument("--side", choices=["ours", "peer"], help=argparse.SUPPRESS)
    ap.add_argument("--release", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        side(args.side, args.rows, args.steps, args.warmup, args.threads, args.compile, args.precision, args.release)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.safetensors"
        data = make_rows(Path(tmp) / "ws", rows_file, args.steps * BATCH)
        # --rounds N: the sides take turns N times (ours, peer, ours, peer, ...), so a slow stretch of the machine
        # lands on both; each side's figure is the median of its rounds, the ratio one of medians
        rounds = [(run_side("ours", rows_file, args), run_side("peer", rows_file, args)) for _ in range(args.rounds)]
    a, b = (_median_side([r[i] for r in rounds]) for i in (0, 1))
    speed = a["tokens_per_s"] / b["tokens_per_s"]
    rss = a["peak_rss_mb"] / b["peak_rss_mb"]
    loss_gap = max(abs(x - y) / y for x, y in zip(a["losses"], b["losses"], strict=True))
    print(f"{'':6}{'tokens/s':>10}{'step s':>9}{'peak RSS MiB':>14}{'load s':>8}  losses")
    for r in (a, b):
        timed = r["step_s"][args.warmup:]
        print(f"{r['side']:6}{r['tokens_per_s']:>10.0f}{sum(timed) / len(timed):>9.3f}{r['peak_rss_mb']:>14.0f}{r['load_s']:>8.1f}  "
              + " ".join(f"{x:.3f}" for x in r["losses"]))
    if args.rounds > 1:
        print("rounds, ours / peer tokens/s: " + ", ".join(f"{o['tokens_per_s']:.0f} / {p['tokens_per_s']:.0f}" for o, p in rounds))
    print(f"ours / peer: tokens/s {speed:.2f}x (goal >= 2), peak RSS {rss:.2f}x (goal <= 0.7), largest loss gap {loss_gap:.2%} (goal <= 2 %)")
    print(json.dumps({"model": "smollm2-135m", "batch": BATCH, "length": LENGTH, "lora_r": 8, "precision": "bf16-autocast" if args.precision == "bf16" else "fp32",
                      "threads": args.threads, "rounds": args.rounds,
                      "round_speedups": [round(o["tokens_per_s"] / p["tokens_per_s"], 3) for o, p in rounds], "lean_memory": args.lean_memory, "peer_releases_freed": args.release_both, "steps": args.steps, "warmup_steps": args.warmup, "compile": args.compile,
                      "labelled_fraction": data["labelled_fraction"], "trainable": a["trainable"],
                      "ours_tokens_per_s": round(a["tokens_per_s"], 1), "peer_tokens_per_s": round(b["tokens_per_s"], 1),
                      "speedup": round(speed, 3), "speedup_goal_met": speed >= 2.0,
                      "ours_releases": a["releases"], "peer_releases": b["releases"],
                      "ours_peak_rss_mb": round(a["peak_rss_mb"], 1), "peer_peak_rss_mb": round(b["peak_rss_mb"], 1),
                      "rss_ratio": round(rss, 3), "rss_goal_met": rss <= 0.7,
                      "max_loss_gap": round(loss_gap, 4), "loss_goal_met": loss_gap <= 0.02,
                      "ours_losses": [round(x, 4) for x in a["losses"]], "peer_losses": [round(x, 4) for x in b["losses"]]}))


if __name__ == "__main__":
    main()
