"""Greedy replies to many prompts at once, for the gate's scoring (eval.general, eval.items).

One prompt at a time, a 135M model on two cores spends most of each step reading its weights; a batch
of prompts reads them once per step for all rows. Each row ends at EOS or an end-of-turn token, and its
text at the first stop string; prompts are encoded as llmkit.generate encodes them (BOS by hand, no
template post-processor) and, like it, keep their last tokens when they do not fit.

Llama-family models decode on the runtime's FastLlama (what `generate`, `chat` and `serve` decode with):
the prompts prefilled together, then one batched step per token for the rows still going, each row
stopping at its own end: the same greedy tokens as HF's `generate` in 0.63x its time (smollm2-135m, the general
check's 26 prompts, 2 cores: bench/gate_replies.py), for FastLlama's copy of the weights in its own layout.
Other architectures go through `generate` on the HF module, left-padded so that every row's next token is in the
last column.
"""

from __future__ import annotations

import torch

from llmkit.generate import encode_prompt
from llmkit.runtime.decoder import eos_set, fit_context, get_decoder
from llmkit.runtime.fast_llama import decode_unsupported_reason


@torch.no_grad()
def greedy_replies(lm, tokenizer, prompts: list[str], max_new_tokens: int, end_ids: list[int] | None = None,
                   stop: list[str] | None = None, batch_size: int = 16, progress=None, label: str = "replies") -> list[str]:
    """The greedy continuation of each prompt (special tokens and anything from a stop string on left out)."""
    replies = greedy_reply_ids(lm, tokenizer, prompts, max_new_tokens, end_ids, batch_size, progress, label)
    return [_cut(tokenizer.decode(ids, skip_special_tokens=True), stop) for ids in replies]


@torch.no_grad()
def greedy_reply_ids(lm, tokenizer, prompts: list[str], max_new_tokens: int, end_ids: list[int] | None = None,
                     batch_size: int = 16, progress=None, label: str = "replies") -> list[list[int]]:
    """The greedy new token ids of each prompt, up to (without) the token that ended it."""
    eos = eos_set(tokenizer.eos_token_id) | eos_set(lm.config.eos_token_id) | set(end_ids or [])
    max_len = getattr(lm.config, "max_position_embeddings", None)
    task = progress.add_task(label, total=len(prompts)) if progress is not None else None
    fast = decode_unsupported_reason(lm) is None
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        rows = [fit_context(encode_prompt(tokenizer, p), max_new_tokens, max_len, tokenizer.bos_token_id)
                for p in prompts[start: start + batch_size]]
        out.extend(_on_fast_decoder(lm, rows, eos) if fast else _on_hf_generate(lm, tokenizer, rows, eos))
        if task is not None:
            progress.advance(task, len(rows))
    return out


def _on_fast_decoder(lm, rows: list[tuple[list[int], int]], eos: set[int]) -> list[list[int]]:
    """Each row's greedy tokens (without the ending one) on FastLlama: one KV pool for the batch, so every step
    attends for all rows still going in one call."""
    decoder = get_decoder(lm)
    pool = decoder.new_pool(len(rows), max(len(ids) + max(new, 1) for ids, new in rows))
    states = [decoder.pool_state(pool, slot) for slot in range(len(rows))]
    logits = decoder.prefill_many([ids for ids, _ in rows], states)  # (B, vocab)
    replies: list[list[int]] = [[] for _ in rows]
    going = list(range(len(rows)))
    while going:
        tokens = logits.argmax(-1).tolist()
        still = []
        for row, token in zip(going, tokens, strict=True):
            if token in eos:
                continue
            replies[row].append(token)
            if len(replies[row]) < rows[row][1]:
                still.append((row, token))
        going = [row for row, _ in still]
        if going:
            logits = decoder.step([states[row] for row in going], [token for _, token in still])
    return replies


def _on_hf_generate(lm, tokenizer, rows: list[tuple[list[int], int]], eos: set[int]) -> list[list[int]]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos) if eos else 0
    new = min(n for _, n in rows)
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, _) in enumerate(rows):
        input_ids[r, width - len(ids):] = torch.tensor(ids)
        mask[r, width - len(ids):] = 1
    generated = lm.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max(new, 1), do_sample=False,
                            eos_token_id=sorted(eos) or None, pad_token_id=pad, num_beams=1)
    return [row[:next((i for i, t in enumerate(row) if t in eos), len(row))] for row in generated[:, width:].tolist()]


def _cut(text: str, stop: list[str] | None) -> str:
    ends = [text.find(s) for s in stop or [] if s in text]
    return text[: min(ends)] if ends else text
