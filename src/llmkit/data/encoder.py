"""`FastEncoder`: the ids `Tokenizer.encode` gives for the tokenizers trained here, several times faster.

The `tokenizers` library encodes at 1-3 MB/s per core on the machines this runs on; encoding is the
largest single cost of `llmkit data prepare`. A byte-level BPE tokenizer first cuts text into
pre-tokens with GPT-2's pattern and then encodes each pre-token on its own, so the same pre-token always
gives the same ids: the encoder finds the pre-tokens itself, encodes each distinct one once with the
library, and gathers ids with numpy.

ASCII text (`_ascii_pretokens`) is cut with numpy from the pattern's rules (runs of letters, digits,
other characters and whitespace; a single space joins the run after it; contractions) and each
pre-token is looked up by a 128-bit tabulation hash in a numpy hash table: no Python object per
pre-token. Other text is cut with the `regex` module and looked up by string. The encoder checks itself
against the library on the first texts it sees and falls back to the library when they differ; the tests
compare it on English, Chinese, SMS, random Unicode and random ASCII. Text is always treated as text: a
literal "<|endoftext|>" inside a document is not turned into the separator token.
"""

from __future__ import annotations

import json
import re
from itertools import chain

import numpy as np
from tokenizers import Tokenizer

# GPT-2's pre-tokenizer pattern, as the ByteLevel pre-tokenizer uses it; the ASCII twin is for `re`,
# which is about twice as fast as `regex` and agrees with it on ASCII text.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_ASCII = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""", re.ASCII)

# Character classes of ASCII bytes for `_ascii_pretokens`: 0 is reserved for the end of a text.
_WS, _LETTER, _DIGIT, _OTHER = 1, 2, 3, 4
_CLASS = np.full(128, _OTHER, dtype=np.uint8)
_CLASS[[ord(c) for c in " \t\n\r\x0b\x0c"]] = _WS  # re.ASCII's \s
_CLASS[ord("a"):ord("z") + 1] = _CLASS[ord("A"):ord("Z") + 1] = _LETTER
_CLASS[ord("0"):ord("9") + 1] = _DIGIT
_AFTER_APOSTROPHE = np.zeros((128, 128), dtype=np.int8)  # (next, next but one) -> contraction length
_AFTER_APOSTROPHE[[ord(c) for c in "stmd"], :] = 2
for _a, _b in ("re", "ve", "ll"):
    _AFTER_APOSTROPHE[ord(_a), ord(_b)] = 3

_KEYED = 15  # pre-tokens up to this many bytes are looked up by their bytes in numpy; longer ones (rare) by text
_LOW_BYTES = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [2**64 - 1], dtype=np.uint64)


def _ascii_pretokens(texts: list[str]) -> tuple[np.ndarray, ...]:
    """GPT-2 pre-tokens of ASCII texts: (starts, ends, first pre-token of each text, codes, data).

    The texts are joined with one end position after each; the rules of the pattern for ASCII text
    ('s|'t|'re|'ve|'m|'ll|'d| ?L+| ?N+| ?[^\\sLN]+|\\s+(?!\\S)|\\s+) give the pre-token starts:
    - every run of one class starts a pre-token, except that a single space before a run of letters,
      digits or other characters starts that run's pre-token instead;
    - a whitespace run followed by such a run ends one character early: \\s+(?!\\S) leaves the last
      character, which is either that joining space or a pre-token of its own;
    - an apostrophe that starts a pre-token and is followed by s, t, m, d, re, ve or ll takes those
      letters; the rest of the letters are the next pre-token.
    """
    data = "\x00".join(texts).encode("ascii") + bytes(17)  # room to read 16 bytes past any start
    code = np.frombuffer(data, dtype=np.uint8)
    ends_of_texts = np.cumsum([len(t) + 1 for t in texts]) - 1
    n = len(code) - 16
    cls = _CLASS[code[:n + 1]]
    cls[ends_of_texts] = 0
    cls[n] = 0
    c, nxt = cls[:n], cls[1:n + 1]
    start = np.empty(n, dtype=bool)
    start[0] = c[0] != 0
    np.not_equal(c[1:], c[:-1], out=start[1:])
    start &= c != 0
    before_run = nxt >= _LETTER  # the next character is a letter, a digit or another non-space
    joining_space = (code[:n] == 32) & before_run  # a space right before such a run
    start |= (c == _WS) & before_run  # the last character of a whitespace run before such a run
    start[1:] &= ~joining_space[:-1]  # ... and the run it joins does not start a pre-token of its own
    quote = np.flatnonzero(code[:n] == 39)
    quote = quote[start[quote] & (nxt[quote] == _LETTER)]
    if quote.size:
        size = _AFTER_APOSTROPHE[code[quote + 1], code[quote + 2] & 127]
        quote, size = quote[size > 0], size[size > 0]
        start[quote + 1] = False
        cut = quote + size
        start[cut[cls[cut] != 0]] = True
    stops = np.flatnonzero(start | (c == 0))
    first = np.flatnonzero(start[stops])
    starts, ends = stops[first], stops[first + 1]
    per_text = np.searchsorted(starts, np.concatenate(([0], ends_of_texts[:-1] + 1)))
    return starts, ends, per_text, code, data


def _keys(starts: np.ndarray, ends: np.ndarray, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pre-token's bytes as two 64-bit words, the length in the top byte of the second.

    Exact for pre-tokens of up to 15 bytes (the 16th byte would be where the length is): two different
    pre-tokens never share a key. Longer ones get a key too, but it must not be used.
    """
    windows = np.lib.stride_tricks.as_strided(code, shape=(len(code) - 15, 16), strides=(1, 1))
    words = windows[starts].view(np.uint64)  # the 16 bytes from each start
    size = ends - starts
    k1 = words[:, 0] & _LOW_BYTES[np.minimum(size, 8)]
    k2 = words[:, 1] & _LOW_BYTES[np.clip(size - 8, 0, 7)] | (size.astype(np.uint64) << np.uint64(56))
    return k1, k2


class _HashTable:
    """(k1, k2) -> entry number, open addressing with linear probing, all in numpy; k2 == 0 is free."""

    def __init__(self, bits: int = 15):
        self.bits, self.count = bits, 0
        self.rows = np.zeros((1 << bits, 3), dtype=np.uint64)  # k1, k2, entry: one cache line per probe

    def _home(self, k1: np.ndarray, k2: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            h = (k1 * np.uint64(0x9E3779B97F4A7C15)) ^ (k2 * np.uint64(0xC2B2AE3D27D4EB4F))
            h ^= h >> np.uint64(29)
            return ((h * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(64 - self.bits)).astype(np.int64)

    def find(self, k1: np.ndarray, k2: np.ndarray) -> np.ndarray:
        """Entry numbers, -1 where the key is not in the table."""
        mask = (1 << self.bits) - 1
        slot = self._home(k1, k2)
        row = np.take(self.rows, slot, axis=0)  # (np.take is several times faster than rows[slot] here)
        hit = (row[:, 0] == k1) & (row[:, 1] == k2)
        out = np.where(hit, row[:, 2].astype(np.int64), -1)
        todo = np.flatnonzero(~hit & (row[:, 1] != 0))  # collided on the first probe: look further
        slot = (slot[todo] + 1) & mask
        while todo.size:
            row = np.take(self.rows, slot, axis=0)
            hit = (row[:, 0] == k1[todo]) & (row[:, 1] == k2[todo])
            out[todo[hit]] = row[hit, 2].astype(np.int64)
            again = ~hit & (row[:, 1] != 0)
            todo, slot = todo[again], (slot[again] + 1) & mask
        return out

    def add(self, k1: np.ndarray, k2: np.ndarray, value: np.ndarray) -> None:
        """Insert keys that are not in the table yet (distinct), growing it to stay at most half full."""
        if 2 * (self.count + len(k1)) > len(self.rows):
            old = self.rows[self.rows[:, 1] != 0]
            bits = self.bits
            while 2 * (self.count + len(k1)) > 1 << bits:
                bits += 1
            self.__init__(bits)
            self.add(old[:, 0], old[:, 1], old[:, 2])
        mask = (1 << self.bits) - 1
        slot = self._home(k1, k2)
        todo = np.arange(len(k1))
        while todo.size:
            free = self.rows[slot, 1] == 0
            _, first = np.unique(slot[free], return_index=True)  # one key per free slot per round
            placed, where = todo[free][first], slot[free][first]
            self.rows[where] = np.stack((k1[placed], k2[placed], value[placed].astype(np.uint64)), axis=1)
            done = np.zeros(len(k1), dtype=bool)
            done[placed] = True
            again = ~done[todo]
            todo, slot = todo[again], (slot[again] + 1) & mask
        self.count += len(k1)


class _Entries(dict):
    """Pre-token -> entry number in the encoder's table; a missing one gets the next number and is queued."""

    def __init__(self, pending: list[str], first: int):
        super().__init__()
        self.pending, self.first = pending, first

    def __missing__(self, key: str) -> int:
        n = self[key] = self.first + len(self.pending)
        self.pending.append(key)
        return n


class FastEncoder:
    """Encodes documents to one flat id array, each document preceded by the separator id."""

    MAX_CACHE = 500_000  # distinct pre-tokens remembered; the cache starts over beyond it

    def __init__(self, backend: Tokenizer, sep_id: int):
        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.encode_special_tokens = True  # data text never becomes a control token
        self.sep_id = sep_id
        self.mode, pattern = _fast_mode(self.backend)
        self._unicode = None
        if self.mode == "bpe":
            try:
                import regex  # installed with transformers; without it non-ASCII text takes the slow path

                self._unicode = regex.compile(pattern)
            except ImportError:
                pass
        if self.mode == "char":
            from llmkit.data.tokenizer import UNK

            vocab = self.backend.get_vocab()
            singles = {ord(t): i for t, i in vocab.items() if len(t) == 1}
            self._unk = self.backend.token_to_id(UNK)
            self._table = np.full(max(singles, default=0) + 1, self._unk, dtype=np.int64)
            self._table[list(singles)] = list(singles.values())
        self._reset()
        self.verified = False

    def _reset(self) -> None:
        # Entry 0 is the document separator; entry i is the run _flat[_starts[i]:_starts[i] + _lens[i]].
        self._pending: list[str] = []  # pre-tokens numbered but not yet encoded
        self._index = _Entries(self._pending, 1)
        self._hashed = _HashTable()
        self._flat = np.array([self.sep_id], dtype=np.int64)
        self._starts = np.zeros(1, dtype=np.int64)
        self._lens = np.ones(1, dtype=np.int64)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not self.verified and texts:
            self._verify([t[:2000] for t in texts[:16]])  # the library is slow: a sample of each text
        if self.mode == "char":
            return self._encode_chars(texts)
        if self.mode is None:
            return self._slow(texts)
        if len(self._lens) > self.MAX_CACHE:
            self._reset()
        entries, i = [], 0
        while i < len(texts):  # runs of ASCII texts go through numpy, the others through `regex`
            j = i + 1
            ascii_run = texts[i].isascii()
            while j < len(texts) and texts[j].isascii() == ascii_run:
                j += 1
            part = self._ascii_entries(texts[i:j]) if ascii_run else self._unicode_entries(texts[i:j])
            if part is None:
                if self._pending:
                    self._learn()
                return self._slow(texts)
            entries.append(part)
            i = j
        idx = np.concatenate(entries) if entries else np.zeros(0, dtype=np.int64)
        if self._pending:
            self._learn()
        n = self._lens[idx]
        ends = np.cumsum(n)
        return self._flat[np.repeat(self._starts[idx] - (ends - n), n) + np.arange(ends[-1] if len(ends) else 0)]

    def _slow(self, texts: list[str]) -> np.ndarray:
        parts = []
        for enc in self.backend.encode_batch(texts, add_special_tokens=False):
            parts.append([self.sep_id])
            parts.append(enc.ids)
        return np.fromiter(chain.from_iterable(parts), dtype=np.int64)

    def _verify(self, texts: list[str]) -> None:
        # The fast path must agree with the tokenizer itself; if it ever does not, it is not used.
        self.verified = True
        if self.mode is not None and not np.array_equal(self.encode(texts), self._slow(texts)):
            self.mode = None

    def _encode_chars(self, texts: list[str]) -> np.ndarray:
        parts = []
        for text in texts:
            cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
            ids = np.full(len(cps) + 1, self._unk, dtype=np.int64)
            known = cps < len(self._table)
            ids[1:][known] = self._table[cps[known]]
            ids[0] = self.sep_id
            parts.append(ids)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _unicode_entries(self, texts: list[str]) -> np.ndarray | None:
        if self._unicode is None:
            return None
        # Looking every pre-token up numbers the new ones as it goes (_Entries.__missing__).
        pieces = (chain((0,), map(self._index.__getitem__, self._unicode.findall(t))) for t in texts)
        return np.fromiter(chain.from_iterable(pieces), dtype=np.int64)

    def _ascii_entries(self, texts: list[str]) -> np.ndarray:
        starts, ends, per_text, code, data = _ascii_pretokens(texts)
        k1, k2 = _keys(starts, ends, code)
        found = self._hashed.find(k1, k2)
        long = np.flatnonzero(ends - starts > _KEYED)
        found[long] = [self._index[data[starts[i]:ends[i]].decode("ascii")] for i in long]
        missing = np.flatnonzero(found < 0)
        if missing.size:  # new pre-tokens: numbered through the text index, then remembered by key
            m = missing[np.lexsort((k2[missing], k1[missing]))]
            new = np.concatenate(([True], (k1[m][1:] != k1[m][:-1]) | (k2[m][1:] != k2[m][:-1])))
            first = m[new]
            values = np.array([self._index[data[starts[i]:ends[i]].decode("ascii")] for i in first], dtype=np.int64)
            self._hashed.add(k1[first], k2[first], values)
            found[m] = values[np.cumsum(new) - 1]
        out = np.zeros(len(found) + len(texts), dtype=np.int64)  # entry 0, the separator, before each text
        keep = np.ones(len(out), dtype=bool)
        keep[per_text + np.arange(len(texts))] = False
        out[keep] = found
        return out

    def _learn(self) -> None:
        """Encode the queued pre-tokens and append their ids to the table, in entry order."""
        rows = [enc.ids for enc in self.backend.encode_batch(self._pending, add_special_tokens=False)]
        lens = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        self._starts = np.concatenate((self._starts, len(self._flat) + np.cumsum(lens) - lens))
        self._lens = np.concatenate((self._lens, lens))
        self._flat = np.concatenate((self._flat, np.fromiter(chain.from_iterable(rows), dtype=np.int64)))
        self._pending.clear()
        self._index.first = len(self._lens)


def _fast_mode(backend: Tokenizer) -> tuple[str | None, str]:
    """('bpe' or 'char', the pre-token pattern) when the tokenizer is one this module knows the rules of
    (the ones trained here), else (None, "")."""
    from llmkit.data.tokenizer import CJK_PATTERN

    spec = json.loads(backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None:
        return None, ""
    plain_bpe = (model.get("type") == "BPE" and not model.get("dropout") and not model.get("continuing_subword_prefix")
                 and not model.get("end_of_word_suffix"))
    if plain_bpe and _byte_level(pre, regex=True):
        return "bpe", GPT2_PATTERN
    # The CJK pre-tokenizer (tokenizer.bpe_pre_tokenizer): CJK_PATTERN's pieces, then bytes. The pattern
    # matches every character and agrees with GPT-2's on ASCII text, so both paths of `encode` apply.
    steps = pre.get("pretokenizers") or []
    if (plain_bpe and pre.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split"
            and steps[0].get("pattern") == {"Regex": CJK_PATTERN} and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert") and _byte_level(steps[1], regex=False)):
        return "bpe", CJK_PATTERN
    if (model.get("type") == "WordLevel" and pre.get("type") == "Split"
            and pre.get("pattern") == {"Regex": r"[\s\S]"} and pre.get("behavior") == "Isolated"):
        return "char", ""
    return None, ""


def _byte_level(pre: dict, regex: bool) -> bool:
    return (pre.get("type") == "ByteLevel" and pre.get("use_regex", True) == regex
            and not pre.get("add_prefix_space"))
