"""Deletion AOPC: does removing the tokens an explanation ranks highest hurt the target more than
removing random ones?

For k = 1..K (K = min(10, free tokens)) the top-k attributed tokens are replaced by the fill
(pad/unk) token and the drop of the target quantity f(x) - f(x without them) is measured; AOPC is
the mean drop over k. The same curve with the tokens in random order, averaged over 5 seeds, is
the baseline an explanation has to beat.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmkit.explain.attribution import Subject


def deletion_aopc(subject: Subject, scores: np.ndarray, max_k: int = 10, seeds: int = 5) -> dict[str, Any]:
    free = subject.free
    k_max = min(max_k, len(free))
    if k_max == 0:
        return {"aopc": 0.0, "aopc_random": 0.0, "k": 0, "curve": [], "curve_random": []}
    order = sorted(free, key=lambda i: -float(scores[i]))
    orders = [order] + [list(np.random.default_rng(seed).permutation(free)) for seed in range(seeds)]
    batch = subject.ids[None].repeat(len(orders) * k_max + 1, 1)
    for o, ranked in enumerate(orders):
        for k in range(1, k_max + 1):
            batch[1 + o * k_max + k - 1, ranked[:k]] = subject.fill_id
    values = subject.score(batch).numpy()
    drops = (values[0] - values[1:]).reshape(len(orders), k_max)
    curve, curve_random = drops[0], drops[1:].mean(0)
    return {"aopc": float(curve.mean()), "aopc_random": float(curve_random.mean()), "k": k_max,
            "curve": [round(float(d), 6) for d in curve], "curve_random": [round(float(d), 6) for d in curve_random],
            "max_move": float(np.abs(drops).max())}


# A deletion curve that never moves p by 1 % (0.01 in log p is the same 1 %) measured no dependence to rank by:
# "faithful" there would be noise beating noise (an English classifier reading Chinese as [UNK] all alike).
NO_EFFECT = 0.01


def verdict(faith: dict[str, Any], quantity: str, value: float) -> str:
    """'faithful' (the top tokens' deletions cost more than random ones), 'not_better', or 'no_effect' (no
    deletion, top or random, moved the target by 1 % of p: the prediction hardly depends on these tokens)."""
    scale = abs(value) if quantity == "probability" else 1.0
    if faith.get("k", 0) and faith.get("max_move", float("inf")) < NO_EFFECT * scale:
        return "no_effect"
    return "faithful" if faith["aopc"] > faith["aopc_random"] else "not_better"

