"""What the LM audits ask of a causal LM: the log-likelihood of whole sentences, and continuations
of equal-length prompts generated together."""

from __future__ import annotations

import torch

from llmkit.runtime.decoder import cache_key


def token_log_probs(lm, tokenizer, texts: list[str], batch_size: int = 256) -> list[list[tuple[int, int, float]]]:
    """Per text, (start, end, log p) of every token: its character span in the text and its
    log-probability given a leading separator and the tokens before it. Texts of one token length
    run as one batch."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    encodings = [tokenizer(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts]
    encoded = [[sep, *e["input_ids"]] for e in encodings]
    scores: list[list[float]] = [[] for _ in texts]
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    device = next(lm.parameters()).device
    with torch.no_grad():
        for rows in by_length.values():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start: start + batch_size]
                ids = torch.tensor([encoded[i] for i in chunk], device=device)  # [B, T]
                logp = lm(input_ids=ids).logits.float()[:, :-1].log_softmax(-1)  # [B, T-1, V]
                picked = logp.gather(-1, ids[:, 1:, None])[..., 0]  # [B, T-1]
                for i, row in zip(chunk, picked.tolist(), strict=True):
                    scores[i] = row
    return [[(int(a), int(b), lp) for (a, b), lp in zip(e["offset_mapping"], row, strict=True)]
            for e, row in zip(encodings, scores, strict=True)]


def sequence_log_likelihoods(lm, tokenizer, texts: list[str], batch_size: int = 256) -> list[float]:
    """Sum of log p(token | earlier tokens) over each whole text, after a leading separator (how
    planted canaries appear in training)."""
    return [sum(lp for *_, lp in tokens) for tokens in token_log_probs(lm, tokenizer, texts, batch_size)]


def continue_batch(lm, prompts: torch.Tensor, new_tokens: int, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """[B, P] equal-length prompts -> [B, new_tokens] continuations (greedy at temperature 0), KV-cached."""
    key = cache_key(lm)
    with torch.no_grad():
        out = lm(input_ids=prompts, use_cache=True)
        cache, logits = out[key], out.logits[:, -1].float()  # [B, V]
        tokens = []
        for step in range(new_tokens):
            if temperature <= 0:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]
            tokens.append(nxt)
            if step == new_tokens - 1:
                break
            out = lm(input_ids=nxt[:, None], use_cache=True, **{key: cache})
            cache, logits = out[key], out.logits[:, -1].float()
    return torch.stack(tokens, 1)  # [B, new_tokens]
