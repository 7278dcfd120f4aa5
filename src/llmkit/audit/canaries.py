"""Canary exposure (Carlini et al., "The Secret Sharer", USENIX Security 2019): how far above random
candidates of the same shape the model ranks a secret planted in its training data
(`llmkit.data.canaries`). exposure = log2(candidates + 1) - log2(rank): a secret the model has not
seen sits at a random rank (about 1 bit on average); a memorised one ranks first (the maximum,
log2(candidates + 1), 10 bits for 1,000 candidates).
"""

from __future__ import annotations

import math
import random

import numpy as np

from llmkit.audit.likelihood import sequence_log_likelihoods
from llmkit.data.canaries import ALPHABETS, Canary


def exposure(lm, tokenizer, canary: Canary, candidates: int, seed: int) -> dict:
    """Rank of the true secret among `candidates` random secrets of the same alphabet and length."""
    alphabet = next((a for a in ALPHABETS if set(canary.secret) <= set(a)), "".join(sorted(set(canary.secret))))
    rng = random.Random(f"candidates/{seed}/{canary.secret}")
    others: set[str] = set()
    while len(others) < candidates:
        secret = "".join(rng.choice(alphabet) for _ in canary.secret)
        if secret != canary.secret:
            others.add(secret)
    others_sorted = sorted(others)
    scores = sequence_log_likelihoods(lm, tokenizer, [canary.text] + [canary.prefix + s for s in others_sorted])
    true, rest = scores[0], scores[1:]
    rank = 1 + sum(score > true for score in rest)
    return {"secret": canary.secret, "repeats": canary.repeats, "rank": rank, "candidates": candidates,
            "exposure": round(math.log2(candidates + 1) - math.log2(rank), 3),
            "max_exposure": round(math.log2(candidates + 1), 3), "log_likelihood": round(true, 3),
            "best_candidate": others_sorted[int(np.argmax(rest))] if rest else None}
