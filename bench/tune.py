"""`llmkit tune classify` of the built-in minilm-l6 on SMS Spam, as a user runs it (issue 21).

Three figures, each from fresh `llmkit` processes in one temporary workspace:
  1. quality: the best trial's val macro-F1 after a --budget-minutes study (TPE, median pruning) against
     the default classify config's val macro-F1 (goal: >=);
  2. pruning: trials finished (complete + pruned) in the same budget with pruning and without (goal: >= 1.5x);
  3. workers: wall time of the same 8 equal-cost trials with --workers 2 and --workers 1 (goal: <= 0.7x;
     two single-threaded trials use two cores better than one two-threaded trial at this size).
Every run shares the fixed part of the config (max_length, evaluation every --eval-every steps); the
default run is classify's defaults on top of it. The last line is one JSON object.

    .venv/bin/python bench/tune.py [--budget-minutes 10] [--max-records 0] [--parallel-trials 8] [--parallel-steps 40]
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
DATA = ROOT.parent / "shared" / "data" / "smsspam" / "SMSSpamCollection.tsv"
SPACE = ("lr: {log-float: [1.0e-5, 3.0e-4]}\nbatch_size: {categorical: [16, 32]}\nwarmup_ratio: {float: [0.0, 0.2]}\n"
         "weight_decay: {float: [0.0, 0.1]}\nepochs: {int: [1, 3]}\n")


def llmkit(*args: str, ws: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "llmkit", *args, "--workspace", str(ws), "--json"], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-minutes", type=float, default=10.0)
    ap.add_argument("--max-records", type=int, default=0, help="first N messages only (0 = all 5,574; a smoke run uses fewer)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=40, help="steps between evaluations: what the pruner sees")
    ap.add_argument("--parallel-trials", type=int, default=8)
    ap.add_argument("--parallel-steps", type=int, default=40, help="steps of each equal-cost trial of the workers figure")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ws = tmp / "ws"
        data = DATA
        if args.max_records:
            data = tmp / "sms.tsv"
            data.write_text("\n".join(DATA.read_text(encoding="utf-8").splitlines()[: args.max_records]) + "\n", encoding="utf-8")
        config = tmp / "config.yaml"
        config.write_text(json.dumps({"data": {"splits": {"val": 0.1, "test": 0.2, "seed": args.seed}},
                                      "classify": {"max_length": args.max_length, "eval_every": args.eval_every,
                                                   "seed": args.seed}}))
        space = tmp / "space.yaml"
        space.write_text(SPACE)
        common = ["--config", str(config)]
        llmkit("data", "prepare", str(data), "--name", "sms", "--task", "classify", *common, ws=ws)

        started = time.perf_counter()
        default = llmkit("train", "classify", "--data", "sms", *common, ws=ws)["metrics"]
        default_s = time.perf_counter() - started
        budget = f"{args.budget_minutes * 60:.0f}s"
        studies = {}
        for pruner in ("median", "none"):
            started = time.perf_counter()
            studies[pruner] = llmkit("tune", "classify", "--data", "sms", "--space", str(space), "--trials", "1000",
                                     "--timeout", budget, "--pruner", pruner, "--study", f"sms-{pruner}",
                                     "--seed", str(args.seed), *common, ws=ws)
            studies[pruner]["wall_s"] = round(time.perf_counter() - started, 1)

        equal = tmp / "equal.yaml"  # only the learning rate varies: every trial costs the same
        equal.write_text("lr: {log-float: [1.0e-5, 3.0e-4]}\n")
        walls = {}
        steps_config = ["--config", str(_steps_config(tmp, config, args.parallel_steps))]
        for workers in (1, 2):
            started = time.perf_counter()
            llmkit("tune", "classify", "--data", "sms", "--space", str(equal), "--trials", str(args.parallel_trials),
                   "--pruner", "none", "--workers", str(workers), "--study", f"sms-workers-{workers}", *steps_config, ws=ws)
            walls[workers] = round(time.perf_counter() - started, 1)

    def finished(study: dict) -> int:
        # A trial the budget cut short is pruned in Optuna's count but ended by the clock, not by itself.
        s = study["states"]
        return s.get("complete", 0) + s.get("pruned", 0) - s.get("stopped_by_budget", 0)

    pruned, plain = studies["median"], studies["none"]
    best = (pruned["best"] or {}).get("value")
    figures = {
        "budget_minutes": args.budget_minutes, "records": args.max_records or "all",
        "default_val_macro_f1": round(default["val_macro_f1"], 4), "default_s": round(default_s, 1),
        "best_val_macro_f1": None if best is None else round(best, 4), "best_params": (pruned["best"] or {}).get("params"),
        "trials_with_pruning": pruned["states"], "trials_without_pruning": plain["states"],
        "finished_ratio": round(finished(pruned) / max(finished(plain), 1), 2),
        "workers_trials": args.parallel_trials, "wall_s_workers_1": walls[1], "wall_s_workers_2": walls[2],
        "workers_ratio": round(walls[2] / walls[1], 3),
        "goal_best_ge_default": True, "goal_finished_ratio": 1.5, "goal_workers_ratio": 0.7,
    }
    figures["met"] = {"quality": best is not None and best >= default["val_macro_f1"],
                      "pruning": figures["finished_ratio"] >= 1.5, "workers": figures["workers_ratio"] <= 0.7}
    print(f"val macro-F1: best trial {figures['best_val_macro_f1']} vs default {figures['default_val_macro_f1']}; "
          f"trials finished in {budget}: {finished(pruned)} with pruning, {finished(plain)} without "
          f"({figures['finished_ratio']}x, goal 1.5x); {args.parallel_trials} trials: --workers 2 {walls[2]}s vs "
          f"--workers 1 {walls[1]}s ({figures['workers_ratio']}x, goal <= 0.7x)")
    print(json.dumps(figures))


def _steps_config(tmp: Path, config: Path, steps: int) -> Path:
    """The shared config with a fixed number of steps: the workers figure compares equal trials."""
    body = json.loads(config.read_text())
    body["classify"] = {**body["classify"], "max_steps": steps, "eval_every": steps}
    out = tmp / "steps.yaml"
    out.write_text(json.dumps(body))
    return out


if __name__ == "__main__":
    main()
