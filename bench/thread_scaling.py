"""How one minilm-l6 classify training step scales from one thread to two: the bound on `bench/tune.py`'s workers figure.

`llmkit tune --workers 2` runs two one-thread trials at once where `--workers 1` runs one two-thread trial at a
time, so with equal trials the wall-time ratio is about (time on 1 thread) / (2 x time on 2 threads) before
fixed costs. Each thread count is measured in its own process (torch fixes its thread pool early): AdamW steps
of the HF sequence classifier on a batch of 16 x 64 random token ids, 3 warm-up steps, the mean of --steps.

    .venv/bin/python bench/thread_scaling.py [--steps 20]

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step_seconds(threads: int, steps: int) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification

    sys.path.insert(0, str(ROOT / "src"))
    from llmkit.models.io import resolve_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(resolve_model("minilm-l6").path), num_labels=2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids, labels = torch.randint(1000, 20000, (16, 64)), torch.randint(0, 2, (16,))

    def step() -> None:
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()

    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, help=argparse.SUPPRESS)  # the child process's one measurement
    args = ap.parse_args()
    if args.threads:
        print(step_seconds(args.threads, args.steps))
        return
    times = {}
    for threads in (1, 2):
        out = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--steps", str(args.steps)],
                             check=True, capture_output=True, text=True)
        times[threads] = float(out.stdout.strip().splitlines()[-1])
    speedup = times[1] / times[2]
    figures = {"step_s_1_thread": round(times[1], 4), "step_s_2_threads": round(times[2], 4),
               "speedup_2_threads": round(speedup, 3),
               "workers_ratio_bound": round(times[1] / (2 * times[2]), 3)}
    print(f"one step: {times[1]:.3f} s on 1 thread, {times[2]:.3f} s on 2 ({speedup:.2f}x); two one-thread trials "
          f"against one two-thread trial at a time: wall ratio about {figures['workers_ratio_bound']} before fixed costs")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
