"""The reward curves of a GRPO run: mean sampled reward and greedy val reward by step, and KL to the reference."""

from __future__ import annotations

from pathlib import Path

from llmkit.train.metrics import read_metrics


def plot_rewards(metrics_file: Path, out: Path, val_before: float | None = None) -> Path | None:
    """`val_before`: the val reward of the evaluation before the first step, drawn at step 0."""
    rows = read_metrics(metrics_file)
    reward, val, kl = {}, {}, {}
    for row in rows:  # later rows win: a resumed run's redone steps replace the first try
        if "reward" in row:
            reward[row["step"]], kl[row["step"]] = row["reward"], row.get("kl", 0.0)
        if "val_reward" in row:
            val[row["step"]] = row["val_reward"]
    if not reward:
        return None
    if val_before is not None:
        val.setdefault(0, val_before)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from llmkit.data.figures import use_cjk_font

    use_cjk_font()  # CJK labels in a CJK font, not boxes

    fig = Figure(figsize=(8, 6))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    steps = sorted(reward)
    top.plot(steps, [reward[s] for s in steps], label="sampled answers (mean)", color="#4c72b0", linewidth=1)
    if val:
        top.plot(sorted(val), [val[s] for s in sorted(val)], label="val, greedy", color="#dd8452", marker="o")
    top.set_ylabel("reward")
    top.set_title("Reward")
    top.legend()
    top.grid(alpha=0.3)
    bottom.plot(steps, [kl[s] for s in steps], color="#55a868", linewidth=1)
    bottom.set_xlabel("step")
    bottom.set_ylabel("KL to the reference")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
