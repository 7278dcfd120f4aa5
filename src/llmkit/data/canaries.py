"""Canaries, as in Carlini et al., "The Secret Sharer" (USENIX Security 2019).

`llmkit train pretrain --canaries N` plants N random secrets ("the secret code is k3f9q2") in the
training tokens, canary i repeated `canary_repeats[i % len]` times at random places, and keeps N
reference secrets made the same way but never planted. This module makes, plants, saves and loads them (data work); the privacy audit
(`llmkit.audit.canaries.exposure`) ranks each true
secret among random candidates of the same shape by the model's log-likelihood of the whole
sentence: exposure = log2(candidates + 1) - log2(rank). A secret the model has not seen sits at a
random rank (exposure about 1 bit on average); a memorised one ranks first (the maximum,
log2(candidates + 1), 10 bits for 1,000 candidates).

The canaries are saved as `canaries.json` in the run folder and in the model folder, so the model
carries what the audit needs (they are synthetic: nothing private leaks through them).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from llmkit.errors import UserError

PREFIX = "the secret code is "
FILE = "canaries.json"
CJK_DIGITS = "一二三四五六七八九十"
ALPHABETS = ("0123456789", "abcdefghijklmnopqrstuvwxyz", CJK_DIGITS)
# (prefix, alphabet) in order of preference: a character vocabulary learnt from Chinese text spells neither digits
# nor Latin letters, but it does spell 口令是 ("the password is") and the numerals 一 to 十.
SPELLINGS = ((PREFIX, ALPHABETS[0]), (PREFIX, ALPHABETS[1]), ("口令是", CJK_DIGITS))


@dataclass
class Canary:
    prefix: str
    secret: str
    repeats: int  # times planted; 0 = a reference secret, never planted

    @property
    def text(self) -> str:
        return self.prefix + self.secret


def _round_trips(tokenizer, text: str) -> bool:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    return (unk is None or unk not in ids) and tokenizer.decode(ids) == text


def choose_spelling(tokenizer) -> tuple[str, str]:
    """(prefix, alphabet): digits when the tokenizer spells them exactly (byte-level BPE always does), else lowercase
    letters (a character vocabulary learnt from text without digits), else Chinese numerals after 口令是 (one learnt
    from Chinese text)."""
    for prefix, alphabet in SPELLINGS:
        if _round_trips(tokenizer, prefix + alphabet):
            return prefix, alphabet
    raise UserError("pretrain.canaries: the dataset's tokenizer cannot spell digits, lowercase letters or the Chinese "
                    "numerals 一 to 十, so no canary can be written in it; train without --canaries")


def secret_length(alphabet: str) -> int:
    """Enough characters for about 2^30 possible secrets: 9 digits or 7 letters."""
    return math.ceil(30 / math.log2(len(alphabet)))


def make_canaries(tokenizer, n: int, repeats: list[int], seed: int) -> list[Canary]:
    """n planted canaries (repeat counts cycling through `repeats`), then n never-planted references."""
    prefix, alphabet = choose_spelling(tokenizer)
    rng = random.Random(f"canaries/{seed}")
    length = secret_length(alphabet)
    secrets: list[str] = []
    while len(secrets) < 2 * n:
        secret = "".join(rng.choice(alphabet) for _ in range(length))
        if secret not in secrets:
            secrets.append(secret)
    planted = [Canary(prefix, s, repeats[i % len(repeats)]) for i, s in enumerate(secrets[:n])]
    return planted + [Canary(prefix, s, 0) for s in secrets[n:]]


def save(canaries: list[Canary], folder: Path) -> Path:
    path = Path(folder) / FILE
    path.write_text(json.dumps({"format": "llmkit.canaries/1", "canaries": [asdict(c) for c in canaries]}, indent=1,
                               ensure_ascii=False), encoding="utf-8")  # 口令是 readable, not \u53e3...
    return path


def load(folder: Path) -> list[Canary] | None:
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    return [Canary(**c) for c in json.loads(path.read_text(encoding="utf-8"))["canaries"]]


def plant(train_shard: Path, out_shard: Path, canaries: list[Canary], tokenizer, sep_id: int, dtype: np.dtype,
          seed: int) -> int:
    """Copy the train shard into `out_shard` with every planted canary inserted `repeats` times at
    random token positions, each copy as its own document (a separator before it and after it).
    Streams the shard in slices between insertion points; returns the tokens added."""
    source = np.memmap(train_shard, dtype=dtype, mode="r")
    rng = np.random.default_rng(seed)
    inserts: list[tuple[int, np.ndarray]] = []
    for canary in canaries:
        ids = np.array([sep_id, *tokenizer(canary.text, add_special_tokens=False)["input_ids"], sep_id], dtype=dtype)
        inserts += [(int(p), ids) for p in rng.integers(0, len(source) + 1, size=canary.repeats)]
    inserts.sort(key=lambda item: item[0])
    added, at = 0, 0
    with open(out_shard, "wb") as out:
        for position, ids in inserts:
            source[at:position].tofile(out)
            ids.tofile(out)
            added += len(ids)
            at = position
        for start in range(at, len(source), 1 << 22):  # the tail, in 4M-token slices
            source[start: start + (1 << 22)].tofile(out)
    return added
