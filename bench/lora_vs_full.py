"""LoRA against full fine-tuning of the micro preset (~11M parameters): peak RSS and step time.

Both runs do the same SFT job (instruct_small, batch 8, 256 tokens, fixed step count) on the same
randomly initialised micro model, each in a fresh process so each peak RSS is its own. The step
time is the median wall time between optimizer steps after the first five (warm-up excluded).
A third run adds gradient checkpointing to LoRA, the usual way to trade time for activation memory
(on a model this small, activations, not weights or optimizer state, dominate the memory).

    .venv/bin/python bench/lora_vs_full.py [--steps N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "instruct_small"


def make_base(ws: Path) -> None:
    """A micro-preset Llama on the chat dataset's tokenizer, saved as a model folder."""
    import torch

    from llmkit.config import DataConfig
    from llmkit.data import prepare
    from llmkit.models.io import save_llama_folder
    from llmkit.models.llama import Llama
    from llmkit.models.presets import model_fields, plain_config
    from llmkit.registry import Registry
    from llmkit.workspace import Workspace

    workspace = Workspace.open(ws)
    registry = Registry.for_workspace(workspace.root)
    ds = prepare(DataConfig(inputs=[str(DATA)], name="chats", task="chat", tokenizer="bpe:2048", skip_bad=True), workspace, registry)
    manifest = json.loads((ds.path / "manifest.json").read_text())["tokenizer"]
    torch.manual_seed(0)
    fields = model_fields("micro", manifest["vocab_size"], 256, bos_token_id=manifest["eos_token_id"],
                          eos_token_id=manifest["eos_token_id"], pad_token_id=manifest["pad_token_id"])
    save_llama_folder(Llama(plain_config(fields)), fields, ds.path / "tokenizer", ws / "micro-base", {"task": "causal-lm"})


def run(ws: Path, method: str, steps: int, *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "llmkit", "train", "sft", "--base", str(ws / "micro-base"), "--data", "chats",
                          "--method", method, "--max-steps", str(steps), "--batch-size", "8", "--max-length", "256",
                          "--eval-every", str(steps), "--checkpoint-every", str(steps), "--skip-bad", "--name", f"micro-{method}",
                          "--workspace", str(ws), "--json", *extra], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    run_dir = Path(json.loads((Path(result["path"]) / "llmkit.json").read_text())["run"]["path"])
    times = [json.loads(line)["time"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    gaps = [b - a for a, b in zip(times[5:], times[6:], strict=False)]
    m = result["metrics"]
    return {"peak_rss_mb": m["peak_memory_mb"], "step_s": statistics.median(gaps), "trainable": m["trainable_parameters"],
            "total": m["total_parameters"], "val_loss": m["val_loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        make_base(ws)
        full = run(ws, "full", args.steps)
        lora = run(ws, "lora", args.steps)
        lora_gc = run(ws, "lora", args.steps, "--gradient-checkpointing")
    print(f"{'':9}{'trainable':>12}{'of':>12}{'peak RSS MiB':>14}{'step s':>9}")
    for name, r in (("full", full), ("lora", lora), ("lora+gc", lora_gc)):
        print(f"{name:9}{r['trainable']:>12,}{r['total']:>12,}{r['peak_rss_mb']:>14.0f}{r['step_s']:>9.3f}")
    figures = {"full_peak_rss_mb": full["peak_rss_mb"], "lora_peak_rss_mb": lora["peak_rss_mb"],
               "rss_ratio_lora_to_full": round(lora["peak_rss_mb"] / full["peak_rss_mb"], 3),
               "full_step_s": round(full["step_s"], 4), "lora_step_s": round(lora["step_s"], 4),
               "step_time_ratio_lora_to_full": round(lora["step_s"] / full["step_s"], 3),
               "lora_gc_peak_rss_mb": lora_gc["peak_rss_mb"], "lora_gc_step_s": round(lora_gc["step_s"], 4),
               "rss_ratio_lora_gc_to_full": round(lora_gc["peak_rss_mb"] / full["peak_rss_mb"], 3),
               "step_time_ratio_lora_gc_to_full": round(lora_gc["step_s"] / full["step_s"], 3),
               "full_trainable": full["trainable"], "lora_trainable": lora["trainable"], "steps": args.steps}
    print(f"LoRA / full: peak RSS {figures['rss_ratio_lora_to_full']:.2f}x, step time {figures['step_time_ratio_lora_to_full']:.2f}x, "
          f"trainable parameters {lora['trainable'] / full['trainable']:.2%}; with gradient checkpointing: peak RSS "
          f"{figures['rss_ratio_lora_gc_to_full']:.2f}x, step time {figures['step_time_ratio_lora_gc_to_full']:.2f}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
