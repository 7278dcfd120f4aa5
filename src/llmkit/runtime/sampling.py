"""Choosing the next token from logits: one `Sampler` per sequence, batched where rows allow."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llmkit.runtime.grammar import TokenConstraint

# Below this a temperature is greedy: dividing logits by 1e-45 overflows them to inf and the softmax
# to NaN (a garbage draw), and anything this cold already puts all the mass on the top token.
GREEDY_BELOW = 1e-5


class Sampler:
    """Picks the next token from logits for one sequence, in HF's processor order.

    Repetition penalty (over prompt + generated tokens), then temperature, top-k, top-p. Temperature
    0 (or anything below GREEDY_BELOW) is greedy. With a seed, a private torch.Generator makes the draws reproducible.
    With a `constraint` (structured output), tokens it disallows get -inf before all of that, so every
    strategy picks among allowed tokens only; `eos_ids` are the sequence's end tokens, allowed exactly
    when the constraint's output is complete.
    """

    def __init__(self, vocab_size: int, prompt_ids: list[int], *, temperature: float = 0.8, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None, device=None,
                 constraint: TokenConstraint | None = None, eos_ids: Iterable[int] = ()):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.constraint, self.eos_ids = constraint, tuple(eos_ids)
        self.penalty = repetition_penalty
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=device or "cpu").manual_seed(seed)
        self.seen = None
        if repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(prompt_ids, dtype=torch.long, device=device)] = True

    def __call__(self, logits: torch.Tensor) -> int:
        if self.constraint is not None:
            logits = self.constrain(logits)
        return self._picked(self._pick(logits))

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (vocab,) with the tokens the constraint disallows at -inf."""
        allowed = self.constraint.mask(logits.shape[-1], self.eos_ids).to(logits.device)
        return torch.where(allowed, logits, float("-inf"))

    def _picked(self, tok: int) -> int:
        """Book-keeping after a pick: the penalty's seen set, and the constraint's state (an end token
        ends the sequence, so the grammar has nothing to advance past)."""
        if self.seen is not None:
            self.seen[tok] = True
        if self.constraint is not None and tok not in self.eos_ids:
            self.constraint.accept(tok)
        return tok

    def _pick(self, logits: torch.Tensor) -> int:
        logits = logits.float()  # (vocab,)
        if self.seen is not None:
            penalised = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
            logits = torch.where(self.seen, penalised, logits)
        if self.greedy:
            tok = int(logits.argmax())
        else:
            logits = logits / self.temperature
            if self.top_k > 0:
                kth = torch.topk(logits, min(self.top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if self.top_p < 1.0:
                # Drop the low tail whose total mass is <= 1 - top_p, always keeping the top token.
                sorted_logits, order = torch.sort(logits)
                tail = sorted_logits.softmax(-1).cumsum(-1) <= 1 - self.top_p
                tail[-1] = False
                logits = logits.masked_fill(tail.scatter(0, order, tail), float("-inf"))
            tok = _draw(logits.softmax(-1)[None], [self])[0]
        return tok

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def plain(self) -> bool:
        """Only temperature applies (no penalty, top-k or top-p): rows can be sampled together."""
        return self.seen is None and self.top_k <= 0 and self.top_p >= 1.0

    @staticmethod
    def sample_batch(samplers: list[Sampler], logits: torch.Tensor) -> list[int]:
        """One token per row of logits (B, vocab), each with its own sampler; the same draws as
        calling each sampler, with greedy and plain-temperature rows done in one op each. Constrained
        rows are masked first; the other rows' logits are left as they are."""
        out: list[int | None] = [None] * len(samplers)
        constrained = [i for i, sm in enumerate(samplers) if sm.constraint is not None]
        if constrained:
            logits = logits.clone()  # the caller's logits stay untouched
            for i in constrained:
                logits[i] = samplers[i].constrain(logits[i])
        greedy = [i for i, sm in enumerate(samplers) if sm.greedy and sm.seen is None]
        plain = [i for i, sm in enumerate(samplers) if not sm.greedy and sm.plain]
        if greedy:
            for i, tok in zip(greedy, logits[greedy].float().argmax(-1).tolist(), strict=True):
                out[i] = tok
        if plain:
            temps = torch.tensor([samplers[i].temperature for i in plain], device=logits.device)
            probs = (logits[plain].float() / temps[:, None]).softmax(-1)  # (P, vocab)
            for i, tok in zip(plain, _draw(probs, [samplers[i] for i in plain]), strict=True):
                out[i] = tok
        return [samplers[i]._picked(tok) if tok is not None else samplers[i]._picked(samplers[i]._pick(logits[i]))
                for i, tok in enumerate(out)]


def _draw(probs: torch.Tensor, samplers: list[Sampler]) -> list[int]:
    """Inverse-CDF draws, one uniform per row from that row's generator: (P, vocab) -> P token ids."""
    u = torch.stack([torch.rand((), generator=sm.generator, device=probs.device) for sm in samplers])  # (P,)
    cdf = probs.cumsum(-1)
    # A floor above 0: u = 0 must not pick a leading token of probability 0.
    target = (u * cdf[:, -1]).clamp_(min=1e-12)[:, None]
    idx = torch.searchsorted(cdf, target).clamp_(max=probs.shape[-1] - 1)  # (P, 1)
    return idx[:, 0].tolist()
