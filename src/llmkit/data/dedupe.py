"""Exact and near-duplicate detection.

Exact: a hash of the normalized text (case and whitespace folded). Near: MinHash signatures of
word 5-gram shingles in an LSH index (the banding of datasketch's MinHashLSH), so a record is compared
only with candidates that share a band. Both run over all records before the split assignment, so no
val or test record has a twin in train.

Signatures are computed with numpy over the whole text at once (code points -> words -> shingles ->
hash permutations): per-word Python work would dominate the data stage on large inputs. They are
pure functions of the text, so worker processes compute them and the parent only keeps the index.
Chinese and Japanese have no spaces between words, so each ideograph or kana counts as a word there,
and a text made mostly of them is shingled by character n-grams whose n grows with its length: one
more character per CJK_CHARS_PER_WORD characters, from 1 up to SHINGLE. Changing one character changes
n of the text's n-grams, so with n fixed at 5 a 50-character poem with one character changed kept a
Jaccard similarity of about 0.7 and went unnoticed at 0.85 (6 of 50 such copies of Tang poems found);
sized by length, one changed character costs about the same similarity (0.05) at any length, and long
texts still get 5-grams, specific enough that different documents over the same few thousand characters
stay apart. (Very short texts, below about 15 characters, cannot reach 0.85 with one character changed.)

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
CJK_CHARS_PER_WORD = 40  # CJK text: one more character per shingle for every 40 characters, up to SHINGLE
_MAX_POS = 4096  # characters of one word that get their own hash weight; longer words share the last
_SEED = 1
_BATCH_CHARS = 32_768
_CJK = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF))
_CJK_ASTRAL = (0x20000, 0x3FFFF)
_table: np.ndarray | None = None


def exact_key(text: str) -> bytes:
    folded = " ".join(text.lower().split())
    return hashlib.blake2b(folded.encode("utf-8"), digest_size=16).digest()


_ASCII_SPACE = np.zeros(128, dtype=bool)
_ASCII_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True  # what str.split() splits ASCII text at


def exact_keys(texts: list[str]) -> list[bytes]:
    """`exact_key` of each text. ASCII texts are folded together in numpy: splitting every text into
    word objects and joining them again was a sixth of the per-record work."""
    keys: list[bytes] = []
    ascii_texts = [t for t in texts if t.isascii()]
    folded = iter(_fold_ascii(ascii_texts) if ascii_texts else [])
    for text in texts:
        if text.isascii():
            keys.append(hashlib.blake2b(next(folded), digest_size=16).digest())
        else:
            keys.append(exact_key(text))
    return keys


def _fold_ascii(texts: list[str]) -> list[bytes]:
    """" ".join(text.lower().split()) of each ASCII text, encoded; texts joined with one gap after each."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    data = np.frombuffer(("\x00".join(texts) + "\x00").lower().encode("ascii"), dtype=np.uint8)
    gaps = np.cumsum(lengths + 1) - 1
    space = _ASCII_SPACE[data]
    word = ~space
    word[gaps] = False
    before = np.concatenate(([False], space[:-1]))
    runs = np.flatnonzero(space & ~before)  # whitespace runs: [runs[i], ends[i])
    ends = np.flatnonzero(~space & before)  # the gap after the last text ends every run
    inner = runs[(runs > 0) & word[runs - 1] & word[ends]]  # between two words of one text: one space
    out = data.copy()
    out[inner] = 32
    keep = word
    keep[inner] = True
    blob = out[keep].tobytes()
    sizes = np.add.reduceat(keep, np.concatenate(([0], gaps[:-1] + 1)), dtype=np.int64)
    stops = np.cumsum(sizes).tolist()
    return [blob[stop - size:stop] for stop, size in zip(stops, sizes.tolist(), strict=True)]


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


def _ascii_word_values() -> np.ndarray:
    """ASCII byte -> its code point as uint64 when it is part of a word, else 0."""
    global _ascii_values
    if _ascii_values is None:
        _ascii_values = np.where(_char_table()[:128] != 0, np.arange(128), 0).astype(np.uint64)
    return _ascii_values


_ascii_values: np.ndarray | None = None


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


_P = 0x100000001B3
_POW_CACHE = 1 << 16  # global powers kept for texts (batches) up to this many characters


def _powers(base: int, n: int, first: int) -> np.ndarray:
    """base**first, base**(first + 1), ... (n of them) mod 2**64."""
    out = np.full(n, base, dtype=np.uint64)
    out[0] = pow(base, first, 2**64)
    return np.cumprod(out, dtype=np.uint64)


_GLOBAL_POW = _powers(_P, _POW_CACHE, 1)  # P**(k+1): the weight of character k counted from the text start
_GLOBAL_INV = _powers(pow(_P, -1, 2**64), _POW_CACHE, 0)  # P**-k, which moves a sum back to its word's start


def _word_hashes(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(one 64-bit hash per word, index of each word's first character) of already lower-cased text.

    A word's hash is _mix(sum of code point * P**(j+1) over its characters j), with j capped at
    _MAX_POS - 1. The sums come from one prefix sum over the text with global powers, moved to each
    word's start by P's inverse (P is odd): no per-character index arrays.
    """
    with np.errstate(over="ignore"):
        ascii_text = text.isascii()
        if ascii_text:
            cps = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
            codes = _char_table()[:128][cps]
        else:
            cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            codes = _char_table()[np.minimum(cps, 0xFFFF)]
            astral = cps > 0xFFFF
            if astral.any():
                codes = np.where(astral, np.where((cps >= _CJK_ASTRAL[0]) & (cps <= _CJK_ASTRAL[1]), 2, 0), codes)
        word = codes == 1
        starts = (codes == 2) | (word & ~np.concatenate(([False], word[:-1])))
        at = np.flatnonzero(starts)
        if at.size == 0:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        n = len(cps)
        nxt = np.append(at[1:], n)  # a word ends at or before the next one starts
        if (nxt - at).max() > _MAX_POS:  # maybe a word longer than _MAX_POS: the capped weights apply
            return _word_hashes_capped(cps, codes, starts)
        small = n <= _POW_CACHE
        powers = _GLOBAL_POW[:n] if small else _powers(_P, n, 1)
        inverse = _GLOBAL_INV if small else _powers(pow(_P, -1, 2**64), n, 0)
        if ascii_text:  # code points of word characters, 0 for the rest, straight from a table
            weighted = _ascii_word_values()[cps]
        else:
            weighted = np.where(codes != 0, cps, 0).astype(np.uint64)
        weighted *= powers
        prefix = np.cumsum(weighted, out=weighted)  # prefix[i]: the sum over characters 0..i
        before = prefix[at - 1]
        before[0] = 0 if at[0] == 0 else before[0]  # (at[0] - 1 is -1 when the text starts with a word)
        return _mix((prefix[nxt - 1] - before) * inverse[at]), at


def _word_hashes_capped(cps: np.ndarray, codes: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inside = np.flatnonzero(codes != 0)
    first = np.flatnonzero(starts[inside])  # where each word begins, as an index into `inside`
    word_of = np.cumsum(starts[inside]) - 1
    pos = np.minimum(np.arange(inside.size) - first[word_of], _MAX_POS - 1)
    weighted = cps[inside].astype(np.uint64) * _POW[pos]
    return _mix(np.add.reduceat(weighted, first)), inside[first]


def _ngrams(words: np.ndarray, n: int) -> np.ndarray:
    """Hash of the n words starting at each position (len(words) - n + 1 of them; empty when too few)."""
    if len(words) < n:
        return np.zeros(0, dtype=np.uint64)
    m = len(words) - n + 1
    sh = words[:m].copy()
    for k in range(1, n):
        sh *= np.uint64(0x9E3779B97F4A7C15)
        sh ^= words[k:m + k]
    return _mix(sh)


def _shingle_sizes(joined: str, at: np.ndarray, owner: np.ndarray, n_words: np.ndarray) -> np.ndarray:
    """Words per shingle for each text: SHINGLE, 1 below SHINGLE words, and for CJK text one per
    CJK_CHARS_PER_WORD characters (see the module docstring)."""
    sizes = np.where(n_words < SHINGLE, 1, SHINGLE)
    if joined.isascii() or not len(at):
        return sizes
    cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)[at]
    cjk = (_char_table()[np.minimum(cps, 0xFFFF)] == 2) & (cps <= 0xFFFF)
    cjk |= (cps >= _CJK_ASTRAL[0]) & (cps <= _CJK_ASTRAL[1])
    n_cjk = np.bincount(owner[cjk], minlength=len(n_words))
    major = 2 * n_cjk > n_words  # most "words" are single CJK characters: text without spaces
    sizes[major] = np.clip(n_words[major] // CJK_CHARS_PER_WORD, 1, SHINGLE)
    return sizes


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
    joined = "\x00".join(lowered)
    words, at = _word_hashes(joined)
    bounds = np.cumsum([len(t) + 1 for t in lowered])  # text i ends before bounds[i]
    owner = np.searchsorted(bounds, at, side="right")  # the text each word belongs to
    n_words = np.bincount(owner, minlength=len(texts))
    sizes = _shingle_sizes(joined, at, owner, n_words)
    with np.errstate(over="ignore"):
        if (sizes == SHINGLE).all():  # the usual case for text with spaces: every text has its 5-grams
            sh = _ngrams(words, SHINGLE)
            whole = owner[:len(sh)] == owner[SHINGLE - 1:]  # 5-grams inside one text
            shingles, shingle_owner = sh[whole], owner[:len(sh)][whole]
        else:
            # Position i holds the n-gram of its text's size starting at word i (a word itself for size 1),
            # when that n-gram lies inside the text; so shingles stay grouped by text, in order.
            size_at = sizes[owner]
            value, keep = words.copy(), size_at == 1
            for n in np.unique(sizes[sizes > 1]).tolist():
                sh = _ngrams(words, n)
                inside = (size_at[:len(sh)] == n) & (owner[:len(sh)] == owner[n - 1:])
                value[:len(sh)][inside] = sh[inside]
                keep[:len(sh)] |= inside
            shingles, shingle_owner = value[keep], owner[keep]
        out: list[np.ndarray | None] = [None] * len(texts)
        if shingles.size == 0:
            return out
        groups = np.flatnonzero(np.concatenate(([True], shingle_owner[1:] != shingle_owner[:-1])))
        sigs = np.empty((len(groups), NUM_PERM), dtype=np.uint32)
        # Blocks of 8 permutations keep the (permutation x shingle) product small enough for the cache.
        # The high 32 bits of the minimum are the minimum of the high 32 bits: one shift per text, not
        # one per shingle.
        for i in range(0, NUM_PERM, 8):
            hv = _A[i:i + 8, None] * shingles[None, :]
            hv += _B[i:i + 8, None]
            sigs[:, i:i + 8] = (np.minimum.reduceat(hv, groups, axis=1) >> np.uint64(32)).T
    for row, text_index in enumerate(shingle_owner[groups]):
        out[text_index] = sigs[row]
    return out


def signature(text: str) -> np.ndarray | None:
    """The MinHash signature of one text; see `signatures`."""
    return signatures([text])[0]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Estimated Jaccard similarity of the shingle sets behind two signatures."""
    return float(np.mean(a == b))


def lsh_bands(threshold: float, num_perm: int, weights: tuple[float, float] = (0.05, 0.95)) -> tuple[int, int]:
    """(bands, rows per band) minimising the weighted chance of false positives and false negatives.

    The choice datasketch's MinHashLSH makes (same candidates, same order, first minimum wins), with the
    integrals of the banding curve done by 64-point Gauss-Legendre quadrature, exact for these
    polynomials, instead of scipy: importing scipy took 0.4 s of every prepare. The tests check that
    both agree on every threshold.
    """
    x, w = np.polynomial.legendre.leggauss(64)  # exact up to degree 127; the curve's is at most num_perm
    pairs = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=np.float64)
    b, r = pairs[:, :1], pairs[:, 1:]

    def integral(lo: float, hi: float, f) -> np.ndarray:
        s = (hi - lo) / 2 * x + (hi + lo) / 2
        return (hi - lo) / 2 * (f(s) @ w)

    def candidate(s):  # chance that two records of Jaccard similarity s share at least one band
        return 1 - (1 - s ** r) ** b

    false_positive = integral(0.0, threshold, candidate)
    false_negative = integral(threshold, 1.0, lambda s: 1 - candidate(s))
    best = int(np.argmin(false_positive * weights[0] + false_negative * weights[1]))
    return int(pairs[best, 0]), int(pairs[best, 1])


class NearDuplicateIndex:
    """The signatures of the records kept so far, indexed by LSH bands.

    A record is a candidate when one of its bands (a run of `rows` signature values) equals the same
    band of a kept record, as in datasketch's MinHashLSH with the same bands; every candidate is then
    checked against the threshold.

    With `parts` > 1 a signature is that many signatures side by side, and a record is a near-duplicate
    only when every part is: a preference pair is (prompt + chosen, prompt + rejected), and two pairs
    that share a prompt and a chosen answer but reject different answers teach different things (one
    signature over all of it made them near-duplicates whenever the shared text outweighed the rest).
    Candidates come from the first part's bands, which any near-duplicate must share anyway.
    """

    _BLOCK = 4096

    def __init__(self, threshold: float = 0.85, num_perm: int = NUM_PERM, parts: int = 1):
        self.threshold = threshold
        self.num_perm, self.parts = num_perm, parts
        # Weights favour recall: candidates are verified below, so extra candidates cost time, not precision.
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        if self.bands < 2:  # threshold 1.0: the optimum is one band, which would make every record a candidate
            self.bands, self.rows = 2, num_perm // 2
        self._tables: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self._blocks: list[np.ndarray] = []
        self._count = 0

    def _stored(self, key: int) -> np.ndarray:
        return self._blocks[key // self._BLOCK][key % self._BLOCK]

    def seen_or_add(self, sig: np.ndarray | None) -> bool:
        """True when a near-duplicate of the record with this signature was added before; else add it."""
        if sig is None:
            return False
        raw, width = sig.tobytes(), 4 * self.rows
        keys = [raw[i * width:(i + 1) * width] for i in range(self.bands)]
        candidates: set[int] = set()
        for table, key in zip(self._tables, keys, strict=True):
            found = table.get(key)
            if found is not None:
                candidates.update(found)
        if candidates:
            stored = np.stack([self._stored(k) for k in candidates])
            similar = np.mean((stored == sig).reshape(len(stored), self.parts, self.num_perm), axis=2).min(axis=1)
            if (similar >= self.threshold).any():
                return True
        if self._count % self._BLOCK == 0:
            self._blocks.append(np.empty((self._BLOCK, self.parts * self.num_perm), dtype=np.uint32))
        self._blocks[-1][self._count % self._BLOCK] = sig
        for table, key in zip(self._tables, keys, strict=True):
            table.setdefault(key, []).append(self._count)
        self._count += 1
        return False
