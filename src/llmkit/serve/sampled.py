"""The tokens of one engine step, row by row: each row's pick, its log-probabilities, or its own failure.

Kept apart from the scheduler (`serve.engine`): what a step samples is per request, and a request's grammar
failing on its row (an engine limit hit deep in a schema, `GrammarError`) must end that request only, while
the other rows of the same batched step take their tokens as if nothing happened.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from llmkit.runtime.sampling import Sampler


class Job(Protocol):
    """What sampling reads of the engine's `Job` (said here, so this module does not import the scheduler's)."""

    sampler: Sampler
    logprobs: int | None  # None: not asked; k: the sampled token's log-probability and the top k


class Logprob(NamedTuple):
    """A sampled token's log-probability and the most likely tokens of its step, [(id, log-probability)], best first."""

    logprob: float
    top: list[tuple[int, float]]


class Sampled(NamedTuple):
    job: Job
    token: int  # -1 when the row failed
    logprob: Logprob | None
    error: Exception | None  # the row's own failure (its constraint's), else None


def sample_rows(jobs: list[Job], logits: torch.Tensor) -> list[Sampled]:
    """One token per job from logits (B, vocab); a row whose constraint fails gets its error instead."""
    failed: dict[int, Exception] = {}
    tokens = Sampler.sample_batch([j.sampler for j in jobs], logits, failed=failed)
    ok = [i for i in range(len(jobs)) if i not in failed]
    logprobs = dict(zip(ok, token_logprobs([jobs[i] for i in ok], logits[ok] if failed else logits,
                                           [tokens[i] for i in ok]), strict=True))
    return [Sampled(job, tokens[i], logprobs.get(i), failed.get(i)) for i, job in enumerate(jobs)]


def token_logprobs(jobs: list[Job], logits: torch.Tensor, tokens: list[int]) -> list[Logprob | None]:
    """Each asking row's log_softmax of its raw logits (B, vocab): the sampled token's value and the top k.
    Rows that did not ask cost nothing."""
    out: list[Logprob | None] = [None] * len(jobs)
    asked = [i for i, job in enumerate(jobs) if job.logprobs is not None]
    if not asked:
        return out
    logprobs = torch.log_softmax(logits[asked].float(), dim=-1)  # (A, vocab)
    picked = torch.tensor([tokens[i] for i in asked], device=logprobs.device)
    chosen = logprobs.gather(1, picked[:, None])[:, 0].tolist()
    k = max(jobs[i].logprobs for i in asked)
    values, ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0].long())
    for row, (i, values_i, ids_i) in enumerate(zip(asked, values.tolist(), ids.tolist(), strict=True)):
        n = jobs[i].logprobs
        out[i] = Logprob(chosen[row], list(zip(ids_i[:n], values_i[:n], strict=True)))
    return out
