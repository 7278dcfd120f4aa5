"""Language-model metrics: loss and perplexity with a sliding window, and bits per byte.

The split's texts become one token stream, each text preceded by the separator (eos, as in
pretraining). Windows of `context` tokens start every `stride` tokens; each target token is scored
once, by the first window that has it after the tokens already scored, so with stride < context
every token but the first window's sees at least context - stride tokens of history. stride =
context gives non-overlapping windows.

Bits per byte = total negative log-likelihood in bits / UTF-8 bytes of the texts: it does not
depend on the tokenizer, so models with different tokenizers compare on it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


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
        logits = model(input_ids=x.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(device).reshape(-1), ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((y != -100).sum())
        if task is not None:
            progress.advance(task, len(group))
    return total, count


def lm_metrics(model, tokenizer, texts: list[str], context: int, stride: int, batch_size: int = 8, progress=None) -> dict[str, float]:
    ids = token_stream(tokenizer, texts)
    if len(ids) < 2:
        raise ValueError("fewer than two tokens to evaluate")
    nll, count = stream_nll(model, ids, context, stride, batch_size, progress)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    loss = nll / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": nll / math.log(2) / max(n_bytes, 1),
            "tokens": count, "bytes": n_bytes, "context": context, "stride": stride}
