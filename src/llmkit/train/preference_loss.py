"""Preference losses (DPO, ORPO, KTO) as pure functions of per-sequence log-probabilities, and the one
forward pass that gives those log-probabilities.

What each loss reads:

- `dpo_loss`: SUMMED completion log-probs of the policy and of the reference, for chosen and rejected.
- `orpo_loss`: per-token AVERAGED completion log-probs of the policy (no reference), and the NLL
  of the chosen sequences, which ORPO adds (`SequenceLogps.nll`: averaged over every token of prompt
  and chosen answer, as TRL computes it).
- `kto_loss`: SUMMED completion log-probs of policy and reference for each rated completion, and
  the same for mismatched (prompt, completion) pairs of the batch (`kto_mismatched`), whose mean
  log-ratio estimates the KL term.

The formulas are TRL's (DPOTrainer sigmoid loss, ORPOTrainer.odds_ratio_loss, KTOTrainer "kto"
loss, all in TRL 1.16); tests/train/test_preference_loss.py runs TRL's own code on the same batch.
Rewards are the implicit ones TRL logs: beta x log-ratio (DPO, KTO), lambda x average log-prob (ORPO).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmkit.train.chunked_loss import linear_cross_entropy
from llmkit.train.supervised import IGNORE, encode_chat


@dataclass
class SequenceBatch:
    """Prompt + completion token ids per row, right-padded."""

    input_ids: torch.Tensor        # (B, T)
    attention_mask: torch.Tensor   # (B, T) 1 on prompt and completion tokens
    completion_mask: torch.Tensor  # (B, T) 1 on completion tokens only


def encode_completion(tokenizer, prompt: list[dict[str, str]], completion: str,
                      max_length: int) -> tuple[list[int], list[int]] | None:
    """Prompt ids and completion ids of one answer of a preference record (data/preference.py).

    Rendered with the tokenizer's chat template exactly as SFT renders a conversation (encode_chat):
    the prompt ids end with the generation prompt, the completion ids hold the answer and the
    template's end-of-turn tokens, so the boundary is where generation starts at inference. Cut to
    `max_length` tokens in all; None when no completion token is left.
    """
    example, _ = encode_chat(tokenizer, [*prompt, {"role": "assistant", "content": completion}], 1 << 62)
    if example is None:
        return None
    # The answer is the labelled run at the end: earlier assistant turns of the prompt are labelled too.
    start = max(i for i, label in enumerate(example.labels) if label == IGNORE) + 1
    if start >= max_length or start == len(example.ids):
        return None
    return example.ids[:start], example.ids[start:max_length]


def pack_sequences(prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                   device: str | torch.device = "cpu") -> SequenceBatch:
    """One row per (prompt, completion): the prompt's ids then the completion's, padded on the right."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
    width = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    completion = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        if not p or not c:
            raise ValueError(f"row {row}: a prompt and a completion need at least one token each")
        ids[row, : len(p) + len(c)] = torch.tensor(p + c)
        attention[row, : len(p) + len(c)] = 1
        completion[row, len(p): len(p) + len(c)] = 1
    return SequenceBatch(ids.to(device), attention.to(device), completion.to(device))


@dataclass
class SequenceLogps:
    """Per-row sums of next-token log-probs: over completion tokens, and over every real token after the first."""

    summed: torch.Tensor           # (B,) sum of log p over completion tokens
    tokens: torch.Tensor           # (B,) completion tokens per row
    sequence_summed: torch.Tensor  # (B,) sum over prompt (but its first token) and completion tokens
    sequence_tokens: torch.Tensor  # (B,)

    @property
    def mean(self) -> torch.Tensor:
        """(B,) average log-prob per completion token (ORPO reads this)."""
        return self.summed / self.tokens.clamp(min=1)

    def nll(self) -> torch.Tensor:
        """Mean next-token loss over all real tokens of all rows, prompts included (ORPO's NLL term as in TRL)."""
        return -self.sequence_summed.sum() / self.sequence_tokens.sum().clamp(min=1)

    def select(self, rows: slice | torch.Tensor) -> SequenceLogps:
        return SequenceLogps(self.summed[rows], self.tokens[rows], self.sequence_summed[rows], self.sequence_tokens[rows])


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T-1) log p(input_ids[:, t+1] | up to t) from logits (B, T, V), in fp32."""
    logits = logits[:, :-1].float()                           # (B, T-1, V): position t predicts t+1
    target = input_ids[:, 1:].unsqueeze(-1)                   # (B, T-1, 1)
    return logits.gather(-1, target).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def completion_logps(model, batch: SequenceBatch, whole: bool = True) -> SequenceLogps:
    """One forward of a causal LM over the batch: a Hugging Face model (`.logits` of its output), or
    llmkit's own Llama / fast-LoRA Llama (`hidden_states` then `lm_head`; right padding needs no mask
    there, since causal attention never lets a real token see the padding after it).

    On our own Llama the head is scored through `chunked_loss` at the needed positions only, row by
    row, so no (B, T, V) logits tensor is ever built (a 49k vocabulary makes it the step's largest);
    the HF fallback builds it. `whole` False skips the all-positions sums on that path (only ORPO reads
    them; they are NaN then, so a reader that should not have is loud).
    """
    if hasattr(model, "hidden_states") and hasattr(model, "lm_head"):
        return _chunked_logps(model.hidden_states(batch.input_ids), model.lm_head.weight, batch, whole)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
    per_token = token_logps(logits, batch.input_ids)          # (B, T-1)
    completion = batch.completion_mask[:, 1:].to(per_token.dtype)
    real = batch.attention_mask[:, 1:].to(per_token.dtype)
    # where(), not a product: a padded position's log-prob may be -inf, and -inf x 0 is NaN.
    return SequenceLogps(
        summed=torch.where(completion.bool(), per_token, 0.0).sum(-1), tokens=completion.sum(-1),
        sequence_summed=torch.where(real.bool(), per_token, 0.0).sum(-1), sequence_tokens=real.sum(-1),
    )


def _chunked_logps(hidden: torch.Tensor, head: torch.Tensor, batch: SequenceBatch, whole: bool) -> SequenceLogps:
    """SequenceLogps from final states (B, T, C): minus the summed cross-entropy at each row's completion
    positions and at all its real positions (position t predicts token t + 1)."""
    target = batch.input_ids[:, 1:]                            # (B, T-1)
    completion, real = batch.completion_mask[:, 1:].bool(), batch.attention_mask[:, 1:].bool()
    summed, sequence = [], []
    for row in range(hidden.shape[0]):
        states = hidden[row, :-1]                              # (T-1, C)
        summed.append(-linear_cross_entropy(states, head, torch.where(completion[row], target[row], IGNORE)))
        sequence.append(-linear_cross_entropy(states, head, torch.where(real[row], target[row], IGNORE)) if whole
                        else hidden.new_full((), float("nan"), dtype=torch.float32))
    return SequenceLogps(torch.stack(summed), completion.sum(-1).float(), torch.stack(sequence), real.sum(-1).float())


@dataclass
class PreferenceLoss:
    """A loss and what a trainer logs beside it; rewards are per row, detached."""

    loss: torch.Tensor              # scalar, differentiable
    chosen_rewards: torch.Tensor    # (n_chosen,)
    rejected_rewards: torch.Tensor  # (n_rejected,)
    extra: dict[str, torch.Tensor] | None = None  # loss-specific terms (ORPO's nll and log-odds, KTO's kl)
    paired: bool = True             # rewards come in (chosen, rejected) pairs row by row (DPO, ORPO; not KTO)

    @property
    def margin(self) -> torch.Tensor:
        """Mean chosen reward minus mean rejected reward (per pair for DPO/ORPO, per batch for KTO)."""
        return _mean(self.chosen_rewards) - _mean(self.rejected_rewards)

    @property
    def accuracy(self) -> torch.Tensor:
        """Fraction of pairs whose chosen reward beats the rejected one (DPO/ORPO only: KTO has no pairs)."""
        return (self.chosen_rewards > self.rejected_rewards).float().mean()

    def metrics(self) -> dict[str, float]:
        out = {"loss": float(self.loss.detach())}
        if self.chosen_rewards.numel():  # a KTO batch may hold answers of one label only
            out["rewards/chosen"] = float(_mean(self.chosen_rewards))
        if self.rejected_rewards.numel():
            out["rewards/rejected"] = float(_mean(self.rejected_rewards))
        if self.chosen_rewards.numel() and self.rejected_rewards.numel():
            out["rewards/margin"] = float(self.margin)
        if self.paired:
            out["rewards/accuracy"] = float(self.accuracy)
        return out | {k: float(v.detach()) for k, v in (self.extra or {}).items()}


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean() if x.numel() else torch.zeros((), device=x.device)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> PreferenceLoss:
    """DPO's sigmoid loss -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), mean over pairs.

    All four are (B,) SUMMED completion log-probs (SequenceLogps.summed).
    """
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    loss = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio)).mean()
    return PreferenceLoss(loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, without cancellation: two forms, switching at -ln 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(policy_chosen_mean: torch.Tensor, policy_rejected_mean: torch.Tensor, chosen_nll: torch.Tensor,
              lam: float = 0.1) -> PreferenceLoss:
    """ORPO: chosen_nll - lam * mean log sigmoid(log odds(chosen) - log odds(rejected)).

    The log-probs are (B,) per-token AVERAGED completion log-probs (SequenceLogps.mean), whose odds
    are p / (1 - p); `chosen_nll` is a scalar (SequenceLogps.nll() of the chosen rows). No reference model.
    """
    chosen, rejected = policy_chosen_mean.float(), policy_rejected_mean.float()
    log_odds = (chosen - rejected) - (_log1mexp(chosen) - _log1mexp(rejected))
    ratio = F.logsigmoid(log_odds)
    loss = chosen_nll - (lam * ratio).mean()
    return PreferenceLoss(loss, lam * chosen.detach(), lam * rejected.detach(),
                          {"nll": chosen_nll.detach(), "log_odds_ratio": ratio.mean().detach(),
                           "log_odds_chosen": log_odds.mean().detach()})


def kto_mismatched(completions: list) -> list:
    """The completions for KTO's KL estimate: each prompt gets the previous row's completion (TRL's choice:
    rolled by one within the batch, so the set of completions is the batch's own)."""
    return completions[-1:] + completions[:-1]


def kto_loss(policy: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor, policy_kl: torch.Tensor,
             ref_kl: torch.Tensor, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> PreferenceLoss:
    """KTO: desirable rows 1 - sigmoid(beta (r - z)), undesirable 1 - sigmoid(beta (z - r)), weighted, mean over rows.

    `policy`/`ref` (B,) SUMMED completion log-probs, `labels` (B,) bool (true: desirable); `policy_kl`/`ref_kl`
    the same for the mismatched pairs (kto_mismatched). z = mean(policy_kl - ref_kl) clamped at 0 and
    detached: the batch's estimate of KL(policy || reference), a baseline that gets no gradient.
    """
    labels = labels.bool()
    kl = (policy_kl - ref_kl).mean().detach().clamp(min=0)
    ratio = policy - ref
    chosen, rejected = ratio[labels], ratio[~labels]
    losses = torch.cat((desirable_weight * (1 - torch.sigmoid(beta * (chosen - kl))),
                        undesirable_weight * (1 - torch.sigmoid(beta * (kl - rejected)))))
    return PreferenceLoss(losses.nanmean(), beta * chosen.detach(), beta * rejected.detach(), {"kl": kl}, paired=False)
