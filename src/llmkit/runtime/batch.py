"""Decoders that step a running batch of sequences: what a serving worker drives.

`Decoder` wraps a backend's batched prefill/step with the release of a finished sequence's cache.
For Llama models on torch the running batch shares one KV pool (one attention call per layer; its
memory taken as sequences fill it), its slots handed out lowest first so the batch stays dense;
llama.cpp holds the whole batch in one context (`runtime.llama_cpp.LlamaCppBatch`); a backend without
batching (ONNX) runs a batch of one. Token ids in, logits out: no text, no scheduling.

`fork(state, capacity)` starts a new sequence as a copy of a prefilled one (several answers to one
prompt, prefilled once): a copy of the KV slot in the torch pool, a clone of a lone cache, llama.cpp's
own sequence copy. ONNX (no cache to copy) has none: each choice is prefilled on its own.
"""

from __future__ import annotations

import copy
import heapq
import os
from collections.abc import Callable
from typing import Any

import torch

from llmkit.runtime.prefix_cache import PrefixCache


class Decoder:
    """What a worker drives: prefill one sequence, step a batch, release a finished one's cache."""

    def __init__(self, prefill: Callable, step: Callable, max_batch: int, max_len: int | None,
                 release: Callable[[Any], None] | None = None, prefill_many: Callable | None = None,
                 fork: Callable[[Any, int], Any] | None = None, prefix_cache: PrefixCache | None = None):
        self.prefill, self.step, self.max_batch, self.max_len = prefill, step, max_batch, max_len
        self.prefix_cache = prefix_cache  # where prompt prefixes are restored from, when the backend can
        self.fork = fork  # (state, capacity) -> a new state holding a copy of its cache; None: not supported
        self.release = release or (lambda state: None)
        # [ids] -> ([state], logits (B, vocab)); one prefill after another unless the backend batches them
        self.prefill_many = prefill_many or self._one_by_one

    def _one_by_one(self, prompts: list[list[int]], capacities: list[int]):
        out = [self.prefill(ids, cap) for ids, cap in zip(prompts, capacities, strict=True)]
        return [state for state, _ in out], torch.stack([logits for _, logits in out])


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        return 8 * 2**30


# The largest KV pool for a whole batch at full context, in bytes. A pool takes memory only as its sequences fill it
# (FastLlama.new_pool), so this bounds address space rather than what is used; a serving configuration is checked
# against the machine's memory before it loads (serve.memory_fit). Past it, each sequence has a cache of its own.
POOL_BUDGET = _physical_memory() // 2


def torch_decoder(lm, max_batch: int, prefix_cache: PrefixCache | None = None, max_len: int = 0) -> Decoder:
    """llmkit's decoder; for Llama models the running batch shares one KV pool (one attention call per layer)
    and, given a `prefix_cache`, a prompt's cached prefix is copied in rather than computed. `max_len` caps
    the context served (0: the model's)."""
    from llmkit.runtime.decoder import get_decoder
    from llmkit.runtime.fast_llama import FastLlama

    dec = get_decoder(lm)
    context = min(dec.max_len or 10**9, max_len or 10**9)
    context = None if context == 10**9 else context
    if not isinstance(dec, FastLlama):
        prefix_cache = None  # the HF module's own cache objects: no block copies
    pool_bytes = 0
    if isinstance(dec, FastLlama):
        pool_bytes = (len(dec.layers) * 2 * max_batch * dec.n_kv * context * dec.head_dim
                      * torch.finfo(dec.dtype).bits // 8)
    if not pool_bytes or pool_bytes > POOL_BUDGET:
        if not isinstance(dec, FastLlama):  # the HF module's own cache objects
            return Decoder(lambda ids, cap: dec.prefill(ids, capacity=cap), dec.step, max_batch, context,
                           fork=_clone_state)

        def lone_many(prompts: list[list[int]], capacities: list[int], adapters: list[int] | None = None):
            # Caches of their own, prefilled together all the same (one pass of the matmuls for the group)
            states = [dec.new_state(cap) for cap in capacities]
            for state, adapter in zip(states, adapters or [], strict=False):
                state.adapter = adapter
            return states, _prefill_with_prefixes(dec, prefix_cache, prompts, states)

        def lone(ids: list[int], cap: int):
            states, logits = lone_many([ids], [cap])
            return states[0], logits[0]
        return Decoder(lone, dec.step, max_batch, context, prefill_many=lone_many, fork=_clone_state,
                       prefix_cache=prefix_cache)
    pool = dec.new_pool(max_batch, context)
    free = list(range(max_batch))  # a heap: the lowest free slot first keeps the batch's slots dense

    def prefill(ids: list[int], capacity: int):
        states, logits = prefill_many([ids], [capacity])
        return states[0], logits[0]

    def release(state) -> None:
        if state is not None and state.pool is pool:
            heapq.heappush(free, state.slot)
            state.pool = None  # released once

    def prefill_many(prompts: list[list[int]], capacities: list[int], adapters: list[int] | None = None):
        states = [dec.pool_state(pool, heapq.heappop(free)) for _ in prompts]
        for state, adapter in zip(states, adapters or [], strict=False):
            state.adapter = adapter  # before the prefix cache looks: an adapter's K/V are its own
        try:
            return states, _prefill_with_prefixes(dec, prefix_cache, prompts, states)
        except BaseException:
            for state in states:
                heapq.heappush(free, state.slot)
            raise

    def fork(state, capacity: int):
        copied = dec.pool_state(pool, heapq.heappop(free))
        pool[:, :, copied.slot, :, :state.length] = pool[:, :, state.slot, :, :state.length]
        copied.length, copied.adapter = state.length, state.adapter
        return copied

    return Decoder(prefill, dec.step, max_batch, context, release, prefill_many, fork, prefix_cache)


def _prefill_with_prefixes(dec, prefix_cache: PrefixCache | None, prompts: list[list[int]], states: list) -> torch.Tensor:
    """FastLlama's prefill_many into `states`, each prompt's cached prefix copied in first and its blocks cached
    after; the logits (B, vocab)."""
    starts = [prefix_cache.restore(ids, s) if prefix_cache else 0 for ids, s in zip(prompts, states, strict=True)]
    logits = dec.prefill_many([ids[start:] for ids, start in zip(prompts, starts, strict=True)], states)
    for ids, state, start in zip(prompts, states, starts, strict=True):
        state.restored = start
        if prefix_cache:
            prefix_cache.save(ids, state)
    return logits


def _clone_state(state, capacity: int):
    """A copy of one sequence's own cache: FastLlama's KV tensor, or the HF module's cache object."""
    from llmkit.runtime.decoder import HFState
    from llmkit.runtime.fast_llama import LlamaState

    if isinstance(state, LlamaState):
        return LlamaState(state.kv.clone(), state.length, adapter=state.adapter)
    if isinstance(state, HFState):
        return HFState(copy.deepcopy(state.cache), state.length, list(state.ids) if state.ids is not None else None)
    raise TypeError(f"cannot fork a {type(state).__name__}")


def llama_cpp_decoder(model, max_batch: int, max_len: int = 0) -> Decoder:
    """A GGUF export on llama.cpp, the running batch in one context (`LlamaCppBatch`)."""
    from llmkit.runtime.llama_cpp import LlamaCppBatch, SeqState

    batch = LlamaCppBatch(model, max_batch, max_len=max_len)
    fork = None
    if hasattr(batch._lib, "llama_memory_seq_cp"):  # a binding without it: each choice is prefilled on its own
        def fork(state: SeqState, capacity: int) -> SeqState:
            seq = heapq.heappop(batch.free)
            batch._lib.llama_memory_seq_rm(batch.memory, seq, -1, -1)
            batch._lib.llama_memory_seq_cp(batch.memory, state.seq, seq, -1, -1)
            return SeqState(seq, state.length)
    return Decoder(batch.prefill, batch.step, max_batch, batch.max_len, batch.release, batch.prefill_many, fork)


def single_decoder(backend) -> Decoder:
    """A backend with prefill(ids, capacity) and step(state, token) for one sequence at a time."""
    return Decoder(backend.prefill, lambda states, toks: backend.step(states[0], toks[0])[None], 1, backend.max_len)
