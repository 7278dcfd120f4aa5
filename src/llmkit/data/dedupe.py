"""Exact and near-duplicate detection.

Exact: a hash of the normalized text (case and whitespace folded). Near: MinHash signatures of
word 5-gram shingles in a datasketch LSH index, so a record is compared only with candidates that
share a band. Both run over all records before the split assignment, so no val or test record has
a twin in train.
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np
from datasketch import MinHash, MinHashLSH

_WORDS = re.compile(r"\w+")
_MERSENNE = np.uint64((1 << 61) - 1)
NUM_PERM = 64
SHINGLE = 5


def exact_key(text: str) -> bytes:
    folded = " ".join(text.lower().split())
    return hashlib.blake2b(folded.encode("utf-8"), digest_size=16).digest()


class NearDuplicateIndex:
    def __init__(self, threshold: float = 0.85, num_perm: int = NUM_PERM, seed: int = 1):
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.num_perm = num_perm
        rng = np.random.RandomState(seed)
        # Universal hashing a*x+b mod p, one (a, b) per permutation, as in datasketch's MinHash.
        self._a = rng.randint(1, int(_MERSENNE), size=num_perm, dtype=np.uint64)
        self._b = rng.randint(0, int(_MERSENNE), size=num_perm, dtype=np.uint64)
        self._perms = np.array([self._a, self._b])  # datasketch's "legacy" scheme is this same a*x+b mod p
        self._count = 0

    def signature(self, text: str) -> MinHash | None:
        words = _WORDS.findall(text.lower())
        if not words:
            return None
        # Hash words once, then combine 5 consecutive word hashes with numpy: per-shingle Python
        # work would dominate the whole data stage on large inputs.
        word_hashes = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
        if len(words) >= SHINGLE:
            shingles = word_hashes[: len(words) - SHINGLE + 1].copy()
            for k in range(1, SHINGLE):
                shingles = shingles * np.uint64(1_000_003) ^ word_hashes[k: len(words) - SHINGLE + 1 + k]
        else:
            shingles = word_hashes
        shingles = np.unique(shingles & np.uint64(0xFFFFFFFF))
        # (P,1)*(1,S) -> (P,S) -> min over shingles -> (P,)
        hv = (self._a[:, None] * shingles[None, :] + self._b[:, None]) % _MERSENNE
        values = hv.min(axis=1) & np.uint64(0xFFFFFFFF)
        return MinHash(num_perm=self.num_perm, hashvalues=values, permutations=self._perms, scheme="legacy")

    def seen_or_add(self, text: str) -> bool:
        """True when a near-duplicate of text was added before; otherwise remember text."""
        sig = self.signature(text)
        if sig is None:
            return False
        if self.lsh.query(sig):
            return True
        self.lsh.insert(str(self._count), sig)
        self._count += 1
        return False
