"""The scratch act sizes its training from a probe of the step `pretrain` will run."""

from __future__ import annotations

import pytest

from llmkit.config import PretrainConfig
from llmkit.demo import scratch
from llmkit.train import optim


@pytest.mark.parametrize("precision", ["fp32", "bf16", "auto"])
def test_the_probe_times_the_training_step_in_its_precision_and_optimizer(monkeypatch, precision):
    """An fp32 probe with a plain AdamW timed steps 2-3x slower than the bf16 ones training then ran: the demo
    trained for a third of its minutes. The probe now runs under training's autocast with training's AdamW."""
    seen = {"autocast": [], "adamw": []}
    real_autocast, real_adamw = optim.autocast, optim.adamw
    monkeypatch.setattr(optim, "autocast", lambda p, d: seen["autocast"].append((p, d)) or real_autocast(p, d))
    monkeypatch.setattr(optim, "adamw", lambda *a: seen["adamw"].append(a) or real_adamw(*a))
    cfg = PretrainConfig(data="x", preset="nano", context=32, batch_size=2, precision=precision, lr=3e-3)
    seconds = scratch._seconds_per_step(cfg, vocab=300)
    assert seconds > 0
    expected = optim.resolve_precision(precision, "cpu")
    assert seen["autocast"] and set(seen["autocast"]) == {(expected, "cpu")}
    (args,) = seen["adamw"]
    assert args[1:] == (cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), "cpu")


def test_a_run_fills_its_budget_unless_that_passes_over_a_small_corpus_too_often():
    # 180 s at 40 ms a step fits 3,825 steps; a 1.1M-token corpus at 2,048 tokens a step allows 5,371 (10 passes)
    assert scratch.planned_steps(180, 0.04, 1_100_000, 2048) == (3825, "3825 steps")
    # the poems: 245k tokens at 1,024 a step, 10 passes = 2,395 steps, fewer than the budget's 3,825
    steps, plan = scratch.planned_steps(180, 0.04, 245_250, 1024)
    assert steps == 2395 and "10 passes over the train split" in plan
    assert scratch.planned_steps(1, 10.0, 100, 1024)[0] == 20  # never fewer than 20 steps
