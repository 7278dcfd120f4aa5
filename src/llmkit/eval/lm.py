"""Language-model metrics: loss and perplexity with a sliding window, and bits per byte.

The split's texts become one token stream, each text preceded by the separator (eos, as in
pretraining). Windows of `context` tokens start every `stride` tokens; each target token is scored
once, by the first window that has it after the tokens already scored, so with stride < context
every token but the first window's sees at least context - stride tokens of history. stride =
context gives non-overlapping windows.

Bits per byte = total negative log-likelihood in bits / UTF-8 bytes of the texts: it does not
depend on the tokenizer, so models with different tokenizers compare on it.

Memory: a window's logits are (context, vocabulary) floats -- for smollm2-135m at its 8,192-token context,
1.6 GB per window, and cross-entropy over them makes a second copy. When a model's logits are its head
applied to its body's final states (checked on a few positions, so a model that scales or soft-caps its
logits is not taken this way), the body runs alone and the head is applied a chunk of positions at a time:
nothing vocabulary-sized outlives a chunk. Any other model (an export's runtime, a soft-capped head) gives
its logits whole, a few windows at a time.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch
import torch.nn.functional as F

# Logits one chunk of the head, or one forward pass of a model without a separable head, may hold at once:
# 16M floats, 64 MB (a window of 8,192 tokens of a 49k vocabulary is 400M).
LOGITS_AT_ONCE = 16 << 20


def token_stream(tokenizer, texts: list[str]) -> np.ndarray:
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    ids: list[int] = []
    for text in texts:
        if sep is not None:
            ids.append(sep)
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return np.asarray(ids, dtype=np.int64)


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, length, first scored offset) of each window over a stream of n_tokens.

    Window inputs are ids[start : start + length]; they predict ids[start + 1 : start + length + 1];
    offsets >= first are the targets this window scores.
    """
    out, scored_until, start = [], 0, 0  # targets 1..scored_until are done
    while scored_until < n_tokens - 1:
        length = min(context, n_tokens - 1 - start)
        first = scored_until - start  # targets start+1+i for i >= first are new
        out.append((start, length, max(first, 0)))
        scored_until = start + length
        start += stride
    return out


@torch.no_grad()
def stream_nll(model, ids: np.ndarray, context: int, stride: int, batch_size: int = 8, progress=None) -> tuple[float, int]:
    """(summed negative log-likelihood in nats, scored tokens) of a token stream."""
    if stride < 1 or stride > context:
        raise ValueError("stride must be in 1..context")
    device = next(model.parameters()).device
    spans = windows(len(ids), context, stride)
    split = _body_and_head(model, torch.from_numpy(ids[: min(len(ids), 8)]).long()[None].to(device))
    if split is None:  # whole logits per pass: as few windows as keep them near LOGITS_AT_ONCE
        vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 1
        batch_size = max(1, min(batch_size, LOGITS_AT_ONCE // (context * vocab)))
    total, count = 0.0, 0
    task = progress.add_task("perplexity", total=len(spans)) if progress is not None else None
    for b in range(0, len(spans), batch_size):
        group = spans[b: b + batch_size]
        width = max(length for _, length, _ in group)
        x = torch.zeros((len(group), width), dtype=torch.long)
        y = torch.full((len(group), width), -100, dtype=torch.long)
        for row, (start, length, first) in enumerate(group):
            x[row, :length] = torch.from_numpy(ids[start: start + length])
            targets = torch.from_numpy(ids[start + 1: start + 1 + length])
            y[row, first:length] = targets[first:]
        mask = (torch.arange(width)[None, :] < torch.tensor([g[1] for g in group])[:, None]).long()
        x, mask, y = x.to(device), mask.to(device), y.to(device)
        if split is not None:
            body, head = split
            states = body(input_ids=x, attention_mask=mask).last_hidden_state  # (B, T, C)
            total += head_nll(states, head, y)
        else:
            logits = model(input_ids=x, attention_mask=mask).logits  # (B, T, V)
            total += float(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),
                                           ignore_index=-100, reduction="sum"))
        count += int((y != -100).sum())
        if task is not None:
            progress.advance(task, len(group))
    return total, count


def _body_and_head(model, probe: torch.Tensor):
    """(body, head) when `model`'s logits are `head(body(...).last_hidden_state)`, else None. Checked once per
    model on `probe` (1, n) ids: a model that scales, soft-caps or otherwise post-processes its logits fails the
    check and keeps its whole logits."""
    try:
        return _SPLITS[model]
    except (KeyError, TypeError):  # TypeError: an object that takes no weak reference is checked every time
        split = _check_body_and_head(model, probe)
    try:
        _SPLITS[model] = split
    except TypeError:
        pass
    return split


_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (body, head) | None, decided once


@torch.no_grad()
def _check_body_and_head(model, probe: torch.Tensor):
    get_body, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    if not callable(get_body) or not callable(get_head):
        return None  # an export's runtime (GgufLM, OnnxLM): logits only
    body, head = get_body(), get_head()
    if not isinstance(body, torch.nn.Module) or body is model or not isinstance(head, torch.nn.Linear):
        return None
    mask = torch.ones_like(probe)
    whole = model(input_ids=probe, attention_mask=mask).logits.float()
    ours = head(body(input_ids=probe, attention_mask=mask).last_hidden_state).float()
    same = ours.shape == whole.shape and torch.allclose(ours, whole, rtol=1e-4, atol=1e-4 * float(whole.abs().max()))
    return (body, head) if same else None


def head_nll(states: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor) -> float:
    """Summed cross-entropy of head(states) (states (..., C)) against targets (...), positions whose target is
    -100 left out; the head runs over a chunk of positions at a time (no (positions, V) tensor)."""
    keep = targets.reshape(-1) != -100
    states, targets = states.reshape(-1, states.shape[-1])[keep], targets.reshape(-1)[keep]
    chunk = max(1, LOGITS_AT_ONCE // head.out_features)
    total = 0.0
    for start in range(0, len(targets), chunk):
        logits = head(states[start: start + chunk]).float()  # (chunk, V)
        total += float(F.cross_entropy(logits, targets[start: start + chunk], reduction="sum"))
    return total


def lm_metrics(model, tokenizer, texts: list[str], context: int, stride: int, batch_size: int = 8, progress=None) -> dict[str, float]:
    ids = token_stream(tokenizer, texts)
    if len(ids) < 2:
        raise ValueError("fewer than two tokens to evaluate")
    nll, count = stream_nll(model, ids, context, stride, batch_size, progress)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    loss = nll / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": nll / math.log(2) / max(n_bytes, 1),
            "tokens": count, "bytes": n_bytes, "context": context, "stride": stride}
