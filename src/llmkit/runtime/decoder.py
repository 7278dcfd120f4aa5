"""The torch decoders: `prefill(ids) -> (state, logits)` and `step(states, token_ids) -> logits (B, vocab)`.

Why not `model.generate()`: at llmkit's model sizes HF's generation loop costs more in per-token
framework overhead than in arithmetic, and a serving engine needs a lower-level core anyway, so
requests can join and leave a running batch between decode steps. Llama-family models (Llama,
Mistral, Qwen2, Qwen3; float or llmkit-quantized) run on `llmkit.runtime.fast_llama.FastLlama`;
anything it doesn't implement (other architectures, sliding windows, longrope) runs the HF module
with its own cache, which is slower but still exact: a speed difference, never an error. Everything here
is token ids: text comes in and goes out in `llmkit.generate`.

Context limit (config.max_position_embeddings): `generate_ids` generates all of max_new_tokens whatever the
context, as llama.cpp's context shift and nanoGPT's cropped window do. A prompt keeps its most recent tokens (and a
leading BOS) up to the context less the room for the new tokens, but never less than half the context; when the
cache is full, the last half of the context (BOS kept) is prefilled again and decoding goes on from there. Batch
evaluation (`fit_context`) instead truncates the prompt so that prompt + new tokens fit, and the server refuses a
request that does not fit (400).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from llmkit.runtime.fast_llama import FastLlama, decode_unsupported_reason
from llmkit.runtime.sampling import Sampler


@dataclass
class HFState:
    cache: object  # the model's own KV cache object; None for a model that keeps none (then `ids` holds the sequence)
    length: int
    ids: list[int] | None = None  # every token so far, for a model without a KV cache (OpenAI GPT)


def cache_key(model) -> str:
    """The forward argument (and output field) of the KV cache: transformers 5 renamed past_key_values
    to cache (the old name warns and goes in 5.40); older releases know only the old one."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class HFDecoder:
    """The same prefill/step interface over the HF module itself, for models FastLlama can't run."""

    def __init__(self, model):
        self.model = model
        self.max_len = getattr(model.config, "max_position_embeddings", None)
        self.key = cache_key(model)

    def _forward(self, ids: list[int], state: HFState | None) -> tuple[HFState, torch.Tensor]:
        """The logits after `ids`, appended to `state`'s sequence. A model that returns no cache (OpenAI GPT keeps
        none) reads its whole sequence again at every token: slower, the same logits."""
        device = next(self.model.parameters()).device
        if state is not None and state.cache is None and state.ids is not None:
            ids = state.ids + ids
            state = None
        past = state.cache if state else None
        out = self.model(input_ids=torch.tensor([ids], device=device), use_cache=True, **{self.key: past})
        length = (state.length if state else 0) + len(ids)
        cache = out.get(self.key)
        return HFState(cache, length, None if cache is not None else list(ids)), out.logits[0, -1]

    @torch.inference_mode()
    def prefill(self, ids: list[int], state: HFState | None = None, capacity: int | None = None):
        return self._forward(ids, state)

    @torch.inference_mode()
    def step(self, states: list[HFState], token_ids: list[int]) -> torch.Tensor:
        logits = []
        for s, tok in zip(states, token_ids, strict=True):
            new, last = self._forward([tok], s)
            s.cache, s.length, s.ids = new.cache, new.length, new.ids
            logits.append(last)
        return torch.stack(logits)  # (B, vocab)


# FastLlama copies weights into its own layout, so it is built once per model and rebuilt only when
# a parameter or buffer changes (training step, load_state_dict, .to()): _version and data_ptr catch those.
# The layout also depends on the torch thread count (weights are split per thread).
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(model) -> tuple:
    # Buffers too: a quantized layer's codes and scales are buffers.
    tensors = [*model.parameters(), *model.buffers()]
    return torch.get_num_threads(), tuple((t.data_ptr(), t._version) for t in tensors)


def get_decoder(model, *, fast: bool = True) -> FastLlama | HFDecoder:
    """The decoder for `model`: FastLlama when it supports the model (and `fast`), else HFDecoder."""
    if not fast or decode_unsupported_reason(model):
        return HFDecoder(model)
    key = _fingerprint(model)
    cached = _DECODERS.get(model)
    if cached is None or cached[0] != key:
        cached = (key, FastLlama(model))
        _DECODERS[model] = cached
    return cached[1]


def fit_context(input_ids: list[int], max_new_tokens: int, max_len: int | None,
                bos_token_id: int | None = None) -> tuple[list[int], int]:
    """Left-truncate the prompt so prompt + new tokens fit in max_len; returns (ids, max_new_tokens)."""
    ids = list(input_ids)
    if not max_len or len(ids) + max_new_tokens <= max_len:
        return ids, max_new_tokens
    ids = _keep_recent(ids, max(1, max_len - max_new_tokens), bos_token_id)
    return ids, min(max_new_tokens, max_len - len(ids))


def eos_set(eos_token_id: int | list[int] | None) -> set[int]:
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


def generate_ids(model, input_ids: list[int], *, max_new_tokens: int = 100, temperature: float = 0.8,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
                 eos_token_id: int | list[int] | None = None) -> Iterator[int]:
    """Yield new token ids one at a time; stops after max_new_tokens or after yielding an EOS id.

    eos_token_id: id or ids that end generation; None means only max_new_tokens does. Past the context the
    window shifts (see the module docstring).
    """
    if not input_ids:
        raise ValueError("generate_ids needs at least one prompt token")
    if max_new_tokens <= 0:
        return
    decoder = get_decoder(model)
    max_len, bos = decoder.max_len, model.config.bos_token_id
    ids = prompt_in_context(input_ids, max_new_tokens, max_len, bos)
    eos = eos_set(eos_token_id)
    device = next(model.parameters()).device
    sampler = Sampler(model.config.vocab_size, ids, temperature=temperature, top_k=top_k, top_p=top_p,
                      repetition_penalty=repetition_penalty, seed=seed, device=device)
    capacity = len(ids) + max_new_tokens if not max_len else min(len(ids) + max_new_tokens, max_len)
    state, logits = decoder.prefill(ids, capacity=capacity)
    window = list(ids)  # the tokens the cache holds, then the one sampled
    for i in range(max_new_tokens):
        tok = sampler(logits)
        yield tok
        if tok in eos or i == max_new_tokens - 1:
            return
        window.append(tok)
        if max_len and state.length >= max_len:  # the cache is full: shift to the last half of the context
            window = _keep_recent(window, max_len // 2, bos)
            state, logits = decoder.prefill(window, capacity=max_len)
        else:
            logits = decoder.step([state], [tok])[0]


def prompt_in_context(input_ids: list[int], max_new_tokens: int, max_len: int | None, bos_token_id: int | None) -> list[int]:
    """The prompt `generate_ids` starts from: its most recent tokens (and a leading BOS) up to the context less the
    new tokens, but at least half the context (the rest of the new tokens come after context shifts)."""
    if not max_len or len(input_ids) + max_new_tokens <= max_len:
        return list(input_ids)
    return _keep_recent(list(input_ids), max(max_len - max_new_tokens, max_len // 2, 1), bos_token_id)


def _keep_recent(ids: list[int], keep: int, bos_token_id: int | None) -> list[int]:
    """The last `keep` tokens of ids, a leading BOS kept in first place."""
    if len(ids) <= keep:
        return ids
    if bos_token_id is not None and ids[0] == bos_token_id and keep > 1:
        return [ids[0]] + ids[len(ids) - (keep - 1):]
    return ids[len(ids) - keep:]
