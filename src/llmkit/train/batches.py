"""Batches from token shards: random windows drawn by memmap, never loading the shard.

The sampler's only state is a torch.Generator, saved in every checkpoint, so a resumed run draws
exactly the batches the uninterrupted run would have. Under DDP every rank draws the same global
batch and takes its own slice: N processes see what one process with N times the batch sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from llmkit.data.shards import shard_dtype


class TokenWindows:
    def __init__(self, shard: Path, vocab_size: int, context: int):
        self.shard = shard
        self.dtype = shard_dtype(vocab_size)
        self.context = context
        self.length = shard.stat().st_size // self.dtype.itemsize

    def _memmap(self) -> np.memmap:
        # A fresh memmap per batch: a long-lived one keeps pages resident and grows RSS.
        return np.memmap(self.shard, dtype=self.dtype, mode="r")

    def random_batch(self, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1):
        starts = torch.randint(self.length - self.context - 1, (batch_size * world,), generator=generator)
        starts = starts[rank * batch_size:(rank + 1) * batch_size]
        data = self._memmap()
        rows = np.stack([data[s: s + self.context + 1].astype(np.int64) for s in starts.tolist()])
        tokens = torch.from_numpy(rows)  # (B, T+1)
        return tokens[:, :-1], tokens[:, 1:]  # x, y: (B, T) each

    def sequential_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Non-overlapping windows over the whole shard, for evaluation."""
        n_windows = (self.length - 1) // self.context
        data = self._memmap()
        done = 0
        for first in range(0, n_windows, batch_size):
            idx = range(first, min(first + batch_size, n_windows))
            rows = np.stack([data[i * self.context: i * self.context + self.context + 1].astype(np.int64) for i in idx])
            tokens = torch.from_numpy(rows)
            yield tokens[:, :-1], tokens[:, 1:]
            done += 1
            if max_batches and done >= max_batches:
                return
