"""Exact and near-duplicate detection.

Exact: a hash of the normalized text (case and whitespace folded). Near: MinHash signatures of
word 5-gram shingles in a datasketch LSH index, so a record is compared only with candidates that
share a band. Both run over all records before the split assignment, so no val or test record has
a twin in train.

Signatures are computed with numpy over the whole text at once (code points -> words -> shingles ->
hash permutations): per-word Python work would dominate the data stage on large inputs. They are
pure functions of the text, so worker processes compute them and the parent only keeps the index.
Chinese and Japanese have no spaces between words, so each ideograph or kana counts as a word there;
a "5-gram" is then five characters, which is how near-duplicate detection is usually done for CJK.

The LSH bands are chosen for recall (a near-duplicate almost always becomes a candidate) and every
candidate is then checked against the threshold with the stored signatures, so LSH collisions do not
become false duplicates. Memory: the index holds each kept record's band keys and its 256-byte
signature, so it grows with the number of unique records (about 1 KB each), not with their size.
"""

from __future__ import annotations

import hashlib
import unicodedata

import numpy as np

NUM_PERM = 64
SHINGLE = 5
_MAX_POS = 4096  # characters of one word that get their own hash weight; longer words share the last
_SEED = 1
_BATCH_CHARS = 32_768
_CJK = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF))
_CJK_ASTRAL = (0x20000, 0x3FFFF)
_table: np.ndarray | None = None


def exact_key(text: str) -> bytes:
    folded = " ".join(text.lower().split())
    return hashlib.blake2b(folded.encode("utf-8"), digest_size=16).digest()


def _char_table() -> np.ndarray:
    """BMP code point -> 0 separator, 1 part of a word, 2 a word by itself (CJK); built once per process."""
    global _table
    if _table is None:
        table = np.zeros(0x10000, dtype=np.uint8)
        for cp in range(0x10000):
            ch = chr(cp)
            if ch == "_" or unicodedata.category(ch)[0] in "LNM":  # letters, digits, combining marks
                table[cp] = 1
        for lo, hi in _CJK:
            table[lo:hi + 1] = 2
        _table = table
    return _table


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64's finalizer: spreads nearby inputs (similar words) over all 64 bits.
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


_rng = np.random.default_rng(_SEED)
_POW = np.cumprod(np.full(_MAX_POS, 0x100000001B3, dtype=np.uint64), dtype=np.uint64)  # wraps mod 2**64
# Multiply-shift hashing, one (a, b) per permutation: the high 32 bits of a*x + b (mod 2**64), a odd.
_A = _rng.integers(1, 2**63, size=NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_B = _rng.integers(0, 2**63, size=NUM_PERM, dtype=np.uint64)


def _word_hashes(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(one 64-bit hash per word, index of each word's first character) of already lower-cased text."""
    with np.errstate(over="ignore"):
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        codes = _char_table()[np.minimum(cps, 0xFFFF)]
        astral = cps > 0xFFFF
        if astral.any():
            codes = np.where(astral, np.where((cps >= _CJK_ASTRAL[0]) & (cps <= _CJK_ASTRAL[1]), 2, 0), codes)
        word = codes == 1
        starts = (codes == 2) | (word & ~np.concatenate(([False], word[:-1])))
        inside = np.flatnonzero(codes != 0)
        if inside.size == 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        first = np.flatnonzero(starts[inside])  # where each word begins, as an index into `inside`
        word_of = np.cumsum(starts[inside]) - 1
        pos = np.minimum(np.arange(inside.size) - first[word_of], _MAX_POS - 1)
        weighted = cps[inside].astype(np.uint64) * _POW[pos]
        return _mix(np.add.reduceat(weighted, first)), inside[first]


def signatures(texts: list[str]) -> list[np.ndarray | None]:
    """MinHash signatures (NUM_PERM uint32 values each) of many texts; None for a text without words.

    All texts go through numpy together, joined by a separator, so short records (an SMS, a title)
    do not each pay the fixed cost of a dozen numpy calls.
    """
    if sum(map(len, texts)) > _BATCH_CHARS and len(texts) > 1:
        # Larger batches make numpy temporaries outgrow the CPU cache (and fresh pages from the OS):
        # about 32k characters per pass measured fastest, 256k was 2-3x slower.
        out, batch, size = [], [], 0
        for text in texts:
            if batch and size + len(text) > _BATCH_CHARS:
                out += signatures(batch)
                batch, size = [], 0
            batch.append(text)
            size += len(text)
        return out + signatures(batch)
    lowered = [t.lower() for t in texts]
    words, at = _word_hashes("\x00".join(lowered))
    bounds = np.cumsum([len(t) + 1 for t in lowered])  # text i ends before bounds[i]
    owner = np.searchsorted(bounds, at, side="right")  # the text each word belongs to
    n_words = np.bincount(owner, minlength=len(texts))
    with np.errstate(over="ignore"):
        if len(words) >= SHINGLE:
            m = len(words) - SHINGLE + 1
            sh = words[:m].copy()
            for k in range(1, SHINGLE):
                sh = sh * np.uint64(0x9E3779B97F4A7C15) ^ words[k:m + k]
            sh = _mix(sh)
            whole = owner[:m] == owner[SHINGLE - 1:]  # 5-grams inside one text
        else:
            sh, whole = np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=bool)
        # Texts with fewer than five words are represented by their words. Position i holds either the
        # 5-gram starting at word i or word i itself, so shingles stay grouped by text, in order.
        short = n_words[owner] < SHINGLE
        value = words.copy()
        value[:len(sh)][whole] = sh[whole]
        keep = short.copy()
        keep[:len(sh)] |= whole
        shingles, shingle_owner = value[keep], owner[keep]
        out: list[np.ndarray | None] = [None] * len(texts)
        if shingles.size == 0:
            return out
        groups = np.flatnonzero(np.concatenate(([True], shingle_owner[1:] != shingle_owner[:-1])))
        sigs = np.empty((len(groups), NUM_PERM), dtype=np.uint32)
        # Blocks of 8 permutations keep the (permutation x shingle) product small enough for the cache.
        for i in range(0, NUM_PERM, 8):
            hv = (_A[i:i + 8, None] * shingles[None, :] + _B[i:i + 8, None]) >> np.uint64(32)
            sigs[:, i:i + 8] = np.minimum.reduceat(hv, groups, axis=1).T
    for row, text_index in enumerate(shingle_owner[groups]):
        out[text_index] = sigs[row]
    return out


def signature(text: str) -> np.ndarray | None:
    """The MinHash signature of one text; see `signatures`."""
    return signatures([text])[0]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity of the shingle sets behind two signatures."""
    return float(np.mean(a == b))


class NearDuplicateIndex:
    """The signatures of the records kept so far, in a datasketch MinHashLSH index."""

    _BLOCK = 4096

    def __init__(self, threshold: float = 0.85, num_perm: int = NUM_PERM):
        from datasketch import MinHash, MinHashLSH  # imports scipy; only near dedupe pays for it

        self.threshold = threshold
        self.num_perm = num_perm
        # Weights favour recall: candidates are verified below, so extra candidates cost time, not precision.
        try:
            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.05, 0.95))
        except ValueError:  # threshold 1.0: datasketch's optimum is one band, which it refuses
            self.lsh = MinHashLSH(num_perm=num_perm, params=(2, num_perm // 2))
        self._minhash = MinHash
        self._perms = np.ones((2, num_perm), dtype=np.uint64)  # unused by the index; saves MinHash making them
        self._blocks: list[np.ndarray] = []
        self._count = 0

    def _stored(self, key: int) -> np.ndarray:
        return self._blocks[key // self._BLOCK][key % self._BLOCK]

    def seen_or_add(self, sig: np.ndarray | None) -> bool:
        """True when a near-duplicate of the record with this signature was added before; else add it."""
        if sig is None:
            return False
        mh = self._minhash(num_perm=self.num_perm, hashvalues=sig, permutations=self._perms, scheme="legacy")
        candidates = self.lsh.query(mh)
        if candidates:
            stored = np.stack([self._stored(k) for k in candidates])
            if (np.mean(stored == sig, axis=1) >= self.threshold).any():
                return True
        if self._count % self._BLOCK == 0:
            self._blocks.append(np.empty((self._BLOCK, self.num_perm), dtype=np.uint32))
        self._blocks[-1][self._count % self._BLOCK] = sig
        self.lsh.insert(self._count, mh, check_duplication=False)
        self._count += 1
        return False
