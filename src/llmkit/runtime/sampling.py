"""Choosing the next token from logits: one `Sampler` per sequence, batched where rows allow."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from llmkit.runtime.grammar import GrammarError

if TYPE_CHECKING:
    from llmkit.runtime.grammar import TokenConstraint

# Below this a temperature is greedy: dividing logits by 1e-45 overflows them to inf and the softmax
# to NaN (a garbage draw), and anything this cold already puts all the mass on the top token.
GREEDY_BELOW = 1e-5


class Sampler:
    """Picks the next token from logits for one sequence, in HF's processor order.

    Repetition penalty (over prompt + generated tokens), then temperature, top-k, top-p. Temperature
    0 (or anything below GREEDY_BELOW) is greedy. OpenAI's adjustments come before the repetition penalty, as
    vLLM applies them: `logit_bias` ({token id: bias}) added to those tokens' logits, and over the generated tokens
    only, `presence_penalty` subtracted once from every token that appeared and `frequency_penalty` times its count. With a seed, a private torch.Generator makes the draws reproducible.
    With a `constraint` (structured output), tokens it disallows get -inf before all of that, so every
    strategy picks among allowed tokens only; `eos_ids` are the sequence's end tokens, allowed exactly
    when the constraint's output is complete.
    """

    def __init__(self, vocab_size: int, prompt_ids: list[int], *, temperature: float = 0.8, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None, device=None,
                 constraint: TokenConstraint | None = None, eos_ids: Iterable[int] = (),
                 logit_bias: dict[int, float] | None = None, presence_penalty: float = 0.0,
                 frequency_penalty: float = 0.0):
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
        self.bias = None  # (vocab,) float: logit_bias spread over the vocabulary
        if logit_bias:
            self.bias = torch.zeros(vocab_size, device=device)
            self.bias[torch.tensor(list(logit_bias), dtype=torch.long, device=device)] = torch.tensor(
                list(logit_bias.values()), device=device)
        self.presence, self.frequency = presence_penalty, frequency_penalty
        self.counts = None  # (vocab,) float: how often each token was generated, for the two penalties
        if presence_penalty or frequency_penalty:
            self.counts = torch.zeros(vocab_size, device=device)

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
        if self.counts is not None and tok < self.counts.numel():
            self.counts[tok] += 1
        if self.constraint is not None and tok not in self.eos_ids:
            self.constraint.accept(tok)
        return tok

    def _pick(self, logits: torch.Tensor) -> int:
        logits = logits.float()  # (vocab,)
        if self.bias is not None or self.counts is not None:
            logits = logits.clone()  # the adjustments below are in place on a slice
            n = min(logits.numel(), (self.bias if self.bias is not None else self.counts).numel())
            if self.bias is not None:
                logits[:n] += self.bias[:n]
            if self.counts is not None:
                logits[:n] -= self.frequency * self.counts[:n] + self.presence * (self.counts[:n] > 0).float()
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
    def adjusted(self) -> bool:
        """Some logits are adjusted before the pick (a penalty or a bias): the row is sampled on its own."""
        return self.seen is not None or self.bias is not None or self.counts is not None

    @property
    def plain(self) -> bool:
        """Only temperature applies (no penalty, bias, top-k or top-p): rows can be sampled together."""
        return not self.adjusted and self.top_k <= 0 and self.top_p >= 1.0

    @staticmethod
    def sample_batch(samplers: list[Sampler], logits: torch.Tensor,
                     failed: dict[int, Exception] | None = None) -> list[int]:
        """One token per row of logits (B, vocab), each with its own sampler; the same draws as
        calling each sampler, with greedy and plain-temperature rows done in one op each. Constrained
        rows are masked first; the other rows' logits are left as they are.

        With `failed`, a row whose constraint fails (GrammarError) is recorded there under its index, with
        -1 for its token, and the other rows are sampled all the same; without it the error propagates."""
        out: list[int | None] = [None] * len(samplers)
        constrained = [i for i, sm in enumerate(samplers) if sm.constraint is not None]
        if constrained:
            logits = logits.clone()  # the caller's logits stay untouched
            for i in constrained:
                row = _guarded(failed, i, samplers[i].constrain, logits[i])
                if row is not None:
                    logits[i] = row
        live = [i for i in range(len(samplers)) if not failed or i not in failed]
        greedy = [i for i in live if samplers[i].greedy and not samplers[i].adjusted]
        plain = [i for i in live if not samplers[i].greedy and samplers[i].plain]
        if greedy:
            for i, tok in zip(greedy, logits[greedy].float().argmax(-1).tolist(), strict=True):
                out[i] = tok
        if plain:
            temps = torch.tensor([samplers[i].temperature for i in plain], device=logits.device)
            probs = (logits[plain].float() / temps[:, None]).softmax(-1)  # (P, vocab)
            for i, tok in zip(plain, _draw(probs, [samplers[i] for i in plain]), strict=True):
                out[i] = tok
        for i in live:
            sm = samplers[i]
            tok = _guarded(failed, i, sm._picked, out[i] if out[i] is not None else sm._pick(logits[i]))
            out[i] = -1 if tok is None else tok
        return [-1 if tok is None else tok for tok in out]


def _guarded(failed: dict[int, Exception] | None, row: int, step, arg):
    """step(arg), or None with the row's GrammarError recorded in `failed` (re-raised when there is no `failed`)."""
    try:
        return step(arg)
    except GrammarError as err:
        if failed is None:
            raise
        failed[row] = err
        return None


def _draw(probs: torch.Tensor, samplers: list[Sampler]) -> list[int]:
    """Inverse-CDF draws, one uniform per row from that row's generator: (P, vocab) -> P token ids."""
    u = torch.stack([torch.rand((), generator=sm.generator, device=probs.device) for sm in samplers])  # (P,)
    cdf = probs.cumsum(-1)
    # A floor above 0: u = 0 must not pick a leading token of probability 0.
    target = (u * cdf[:, -1]).clamp_(min=1e-12)[:, None]
    idx = torch.searchsorted(cdf, target).clamp_(max=probs.shape[-1] - 1)  # (P, 1)
    return idx[:, 0].tolist()
