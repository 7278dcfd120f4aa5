"""Token shards: one flat numpy memmap per split, documents separated by <|endoftext|>.

uint16 while the vocabulary fits below 65,536, else uint32. Training reads random windows by
memmap without loading the file (nanoGPT's train.bin/val.bin, with a manifest beside it).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def shard_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


def write_shard(path: Path, tokenizer, texts: Iterable[str], vocab_size: int, batch: int = 512) -> tuple[int, int, np.ndarray]:
    """Tokenize texts into path; return (tokens, documents, per-token-id counts)."""
    dtype = shard_dtype(vocab_size)
    eot = tokenizer.eos_token_id
    backend = tokenizer.backend_tokenizer
    counts = np.zeros(vocab_size, dtype=np.int64)
    n_tokens = n_docs = 0
    with open(path, "wb") as fh:
        pending: list[str] = []

        def flush() -> None:
            nonlocal n_tokens, n_docs
            # encode_batch runs in parallel inside the tokenizers library (Rust threads).
            encodings = backend.encode_batch(pending, add_special_tokens=False)
            ids: list[int] = []
            for enc in encodings:
                ids.append(eot)
                ids.extend(enc.ids)
            arr = np.asarray(ids, dtype=dtype)
            arr.tofile(fh)
            counts[:] += np.bincount(arr, minlength=vocab_size)[:vocab_size]
            n_tokens += len(arr)
            n_docs += len(pending)
            pending.clear()

        for text in texts:
            pending.append(text)
            if len(pending) >= batch:
                flush()
        if pending:
            flush()
    return n_tokens, n_docs, counts


def read_shard(path: Path, vocab_size: int) -> np.memmap:
    return np.memmap(path, dtype=shard_dtype(vocab_size), mode="r")
