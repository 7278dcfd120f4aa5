"""Token shards: one flat numpy memmap per split, documents separated by <|endoftext|>.

uint16 while the vocabulary fits below 65,536, else uint32. Training reads random windows by
memmap without loading the file (nanoGPT's train.bin/val.bin, with a manifest beside it). Every
document is preceded by the separator, so the separator count equals the document count and a
window that starts at a separator starts at a document.

Ids arrive in batches (encoded by worker processes, see `pipeline.py`) and are appended as they come,
so memory holds one batch, never the shard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def shard_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends id batches to `path` (None: count only) and keeps token and per-id counts."""

    def __init__(self, path: Path | None, vocab_size: int, sep_id: int):
        self.path = path
        self.vocab_size = vocab_size
        self.sep_id = sep_id
        self.dtype = shard_dtype(vocab_size)
        self.counts = np.zeros(vocab_size, dtype=np.int64)
        self.tokens = 0  # separators included
        self.documents = 0
        self._fh = open(path, "wb") if path is not None else None

    def add(self, ids: np.ndarray, documents: int, counts: np.ndarray | None = None) -> None:
        if self._fh is not None:
            ids.astype(self.dtype, copy=False).tofile(self._fh)
        self.counts += counts if counts is not None else token_counts(ids, self.vocab_size)
        self.tokens += len(ids)
        self.documents += documents

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def token_counts(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    return np.bincount(ids, minlength=vocab_size)[:vocab_size].astype(np.int64, copy=False)


def read_shard(path: Path, vocab_size: int) -> np.memmap:
    return np.memmap(path, dtype=shard_dtype(vocab_size), mode="r")
