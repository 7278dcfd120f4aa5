"""Greedy replies to many prompts at once, for the gate's scoring (eval.general, eval.items).

One prompt at a time, a 135M model on two cores spends most of each step reading its weights; a batch
of prompts (left-padded, so every row's next token is in the last column) reads them once per step for
all rows, which is what makes the general check take seconds. Each row ends at EOS or an end-of-turn
token, and its text at the first stop string; prompts are encoded as llmkit.generate encodes them (BOS
by hand, no template post-processor) and, like it, keep their last tokens when they do not fit.
"""

from __future__ import annotations

import torch

from llmkit.generate import encode_prompt
from llmkit.runtime.decoder import eos_set, fit_context


@torch.no_grad()
def greedy_replies(lm, tokenizer, prompts: list[str], max_new_tokens: int, end_ids: list[int] | None = None,
                   stop: list[str] | None = None, batch_size: int = 16, progress=None, label: str = "replies") -> list[str]:
    """The greedy continuation of each prompt (special tokens and anything from a stop string on left out)."""
    eos = eos_set(tokenizer.eos_token_id) | eos_set(lm.config.eos_token_id) | set(end_ids or [])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos) if eos else 0
    max_len = getattr(lm.config, "max_position_embeddings", None)
    task = progress.add_task(label, total=len(prompts)) if progress is not None else None
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [fit_context(encode_prompt(tokenizer, p), max_new_tokens, max_len, tokenizer.bos_token_id)
                for p in prompts[start: start + batch_size]]
        new = min(n for _, n in rows)
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, (ids, _) in enumerate(rows):
            input_ids[r, width - len(ids):] = torch.tensor(ids)
            mask[r, width - len(ids):] = 1
        generated = lm.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max(new, 1), do_sample=False,
                                eos_token_id=sorted(eos) or None, pad_token_id=pad, num_beams=1)
        for row in generated[:, width:].tolist():
            ended = next((i for i, t in enumerate(row) if t in eos), len(row))
            out.append(_cut(tokenizer.decode(row[:ended], skip_special_tokens=True), stop))
        if task is not None:
            progress.advance(task, len(rows))
    return out


def _cut(text: str, stop: list[str] | None) -> str:
    ends = [text.find(s) for s in stop or [] if s in text]
    return text[: min(ends)] if ends else text
