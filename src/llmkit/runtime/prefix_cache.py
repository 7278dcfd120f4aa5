"""Prefix reuse: K/V of prompt prefixes computed before, found again by a hash of token blocks.

As vLLM's automatic prefix caching: a prompt is cut into blocks of `block` tokens; block k's key hashes its
tokens together with block k-1's key, so one key names the whole prefix up to and including it. A new prompt
walks its keys while they are cached, copies those blocks' K/V into its own cache and prefills only the rest
(always its last token, whose logits start the answer). After a prefill, the prompt's full blocks that are not
cached yet are copied out. A 1,000-token system prompt shared by every request is then prefilled once.

Bounded by a byte budget, least recently used out first. A hit refreshes its blocks from the last to the
first, so a chain's first block (shared by every prompt that starts the same way) is evicted last and its
leaves first. An entry keeps its tokens and its parent's key, and a hit checks both: a hash collision is a
miss, never another prompt's cache. The cached K/V belong to one model's weights: one cache per served model.
Token ids only; the cache knows nothing of text.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class _Block:
    parent: int | None
    tokens: tuple[int, ...]
    kv: torch.Tensor  # (n_layer, 2, n_kv_head, block, head_dim)


class PrefixCache:
    def __init__(self, budget_bytes: int, block: int = 32):
        if block < 1:
            raise ValueError("block must be at least 1 token")
        self.budget, self.block = budget_bytes, block
        self.blocks: OrderedDict[int, _Block] = OrderedDict()
        self.bytes = 0
        self.queried = 0  # prompt tokens looked up
        self.hits = 0  # of those, restored from the cache
        self._lock = threading.Lock()  # the workers of one model share its cache

    def _keys(self, ids: list[int], blocks: int, adapter: int = 0) -> list[tuple[int, int | None, tuple[int, ...]]]:
        """(key, parent key, tokens) of the first `blocks` full blocks of `ids`. The chain starts from the LoRA
        adapter the sequence decodes with: its K/V differ from the base's for the same tokens."""
        out, parent = [], (None if not adapter else hash(("adapter", adapter)))
        for k in range(blocks):
            tokens = tuple(ids[k * self.block:(k + 1) * self.block])
            key = hash((parent, tokens))
            out.append((key, parent, tokens))
            parent = key
        return out

    def restore(self, ids: list[int], state) -> int:
        """Copy the cached K/V of the longest cached prefix of `ids` (whole blocks, leaving at least the last
        token to compute) into `state`'s cache, which must be empty; sets and returns its length."""
        usable = (len(ids) - 1) // self.block
        found: list[tuple[int, _Block]] = []
        with self._lock:
            self.queried += len(ids)
            for key, parent, tokens in self._keys(ids, usable, getattr(state, "adapter", 0)):
                entry = self.blocks.get(key)
                if entry is None or entry.parent != parent or entry.tokens != tokens:
                    break
                found.append((key, entry))
            for key, _ in reversed(found):
                self.blocks.move_to_end(key)
            length = len(found) * self.block
            self.hits += length
        if found:
            state.kv[:, :, :, :length] = torch.cat([entry.kv for _, entry in found], dim=3)
        state.length = length
        return length

    def save(self, ids: list[int], state) -> None:
        """Cache the full blocks of the prompt `ids` (whose K/V `state` now holds) that are not cached yet."""
        if self.budget <= 0:
            return
        keys = self._keys(ids, len(ids) // self.block, getattr(state, "adapter", 0))
        with self._lock:
            for k, (key, parent, tokens) in enumerate(keys):
                if key in self.blocks:
                    continue
                kv = state.kv[:, :, :, k * self.block:(k + 1) * self.block].clone()
                size = kv.numel() * kv.element_size()
                if size > self.budget:
                    return
                self.blocks[key] = _Block(parent, tokens, kv)
                self.bytes += size
            for key, _, _ in reversed(keys):
                if key in self.blocks:
                    self.blocks.move_to_end(key)
            while self.bytes > self.budget and self.blocks:
                _, old = self.blocks.popitem(last=False)
                self.bytes -= old.kv.numel() * old.kv.element_size()

    @property
    def hit_rate(self) -> float:
        """Share of looked-up prompt tokens restored rather than computed."""
        return self.hits / self.queried if self.queried else 0.0
