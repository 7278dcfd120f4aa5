"""Model tokens grouped into the tokens an explanation shows: whole characters, never bytes of one.

A byte-level BPE (GPT-2's, SmolLM2's, llmkit's) spends two or three tokens on a Chinese character its
vocabulary lacks, each holding some of the character's UTF-8 bytes; shown one by one they are mojibake
("å¤" and "ľ" for 夜). Consecutive pieces are joined until their bytes decode as UTF-8, and the group
is shown as its text with the pieces' attributions summed (the attributions of IG, occlusion and SHAP
add up over tokens, so the sum is the group's share). Attention maps are merged the same way: a row
is the mean of the group's rows, a column the sum of its columns, so rows still sum to one.
SentencePiece byte-fallback pieces (<0xE5>) are joined the same way.
"""

from __future__ import annotations

import codecs
import json
import re
from functools import lru_cache

import numpy as np

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    from llmkit.data.tokenizer import byte_alphabet

    return {char: byte for byte, char in byte_alphabet().items()}


def _is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "backend", None)
    if backend is None or not hasattr(backend, "to_str"):
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders") or [decoder]
    return any(p.get("type") == "ByteLevel" for p in parts)


def piece_bytes(tokenizer, ids: list[int]) -> list[bytes | None]:
    """The UTF-8 bytes each token stands for; None where that is not known (the token is shown as it is)."""
    byte_level = _is_byte_level(tokenizer)
    table = _byte_of_char() if byte_level else {}
    out: list[bytes | None] = []
    for piece in tokenizer.convert_ids_to_tokens(ids):
        piece = "" if piece is None else str(piece)
        fallback = _BYTE_PIECE.fullmatch(piece)
        if fallback:
            out.append(bytes([int(fallback.group(1), 16)]))
        elif byte_level and piece and all(c in table for c in piece):
            out.append(bytes(table[c] for c in piece))
        else:
            out.append(None)
    return out


def token_text(tokenizer, token_id: int) -> str:
    """One token as text; a piece holding only some bytes of a character (a byte-level BPE's first byte of 好) shows
    those bytes as <0xE5> rather than the replacement character '�' its decoding gives."""
    text = tokenizer.decode([token_id])
    raw = piece_bytes(tokenizer, [token_id])[0] if "\ufffd" in text else None
    if raw is None:
        return text
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        whole = decoder.decode(raw)  # the whole characters; a character's first bytes wait in the decoder
    except UnicodeDecodeError:  # it starts inside a character
        return "".join(f"<0x{b:02X}>" for b in raw)
    return whole + "".join(f"<0x{b:02X}>" for b in decoder.getstate()[0])


def display_groups(pieces: list[bytes | None], special: list[bool]) -> list[tuple[int, int, str | None]]:
    """(start, end, text) per shown token: consecutive pieces joined until their bytes are whole UTF-8.

    text is None for a token shown as the tokenizer names it (a special token, or bytes not known).
    Pieces whose bytes never become valid UTF-8 (a model's truncated text) stay single, shown with U+FFFD.
    """
    groups: list[tuple[int, int, str | None]] = []
    i, n = 0, len(pieces)
    while i < n:
        if special[i] or pieces[i] is None:
            groups.append((i, i + 1, None))
            i += 1
            continue
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        text, j = "", i
        try:
            while j < n and not special[j] and pieces[j] is not None:
                text += decoder.decode(pieces[j])
                j += 1
                if not decoder.getstate()[0]:  # no bytes of an unfinished character left over
                    break
            whole = not decoder.getstate()[0]
        except UnicodeDecodeError:
            whole = False
        if whole:
            groups.append((i, j, text))
            i = j
        else:
            groups.append((i, i + 1, pieces[i].decode("utf-8", "replace")))
            i += 1
    return groups


def merge_matrix(groups: list[tuple[int, int, str | None]], n_total: int) -> np.ndarray:
    """[n_total, shown groups + the positions after them] 0/1: which group each position belongs to."""
    n_shown = groups[-1][1] if groups else 0
    m = np.zeros((n_total, len(groups) + n_total - n_shown), dtype=np.float64)
    for g, (start, end, _) in enumerate(groups):
        m[start:end, g] = 1.0
    for k in range(n_total - n_shown):  # a completion's tokens are not shown and stay as they are
        m[n_shown + k, len(groups) + k] = 1.0
    return m


def merge_attention(matrix: np.ndarray, membership: np.ndarray) -> np.ndarray:
    """[..., n, n] -> [..., m, m]: rows averaged over a group (each still sums to one), columns summed."""
    sizes = membership.sum(0)
    return np.einsum("ig,...ij,jh->...gh", membership, matrix, membership) / sizes[:, None]


def special_positions(tokenizer, ids: list[int], unknown: dict[int, str], warns: list[str]) -> list[bool]:
    """Which positions are special tokens (never perturbed nor scored). A position that reads the user's text as the
    unknown token is not: it was skipped as special, so a text the vocabulary lacks (Chinese for a Shakespeare
    character model) got all-zero scores and no word why; it is scored, and the warning says what the model saw."""
    specials = set(tokenizer.all_special_ids)
    if unknown:
        chars = "".join(dict.fromkeys("".join(unknown[i] for i in sorted(unknown))))
        shown = chars if len(chars) <= 20 else chars[:20] + "..."
        warns.append(f"{len(unknown)} of the text's tokens {'is' if len(unknown) == 1 else 'are'} outside the model's "
                     "vocabulary and read as "
                     f"{tokenizer.unk_token} ({shown}): the model sees them all as one same token")
    return [int(t) in specials and i not in unknown for i, t in enumerate(ids)]


def unknown_causal(tokenizer, text: str, prompt: list[int]) -> dict[int, str]:
    """`unknown_text` for a causal LM's prompt, which may start with BOS and keep only the text's last tokens: the
    text's tokens are matched from the end."""
    unk = tokenizer.unk_token_id
    if unk is None or unk not in prompt or not getattr(tokenizer, "is_fast", False):
        return {}
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    out = {}
    for back, (t, (start, end)) in enumerate(zip(reversed(enc["input_ids"]), reversed(enc["offset_mapping"]), strict=True)):
        pos = len(prompt) - 1 - back
        if pos < 0 or prompt[pos] != t:
            break
        if t == unk and end > start:
            out[pos] = text[start:end]
    return out


def unknown_text(tokenizer, text: str, ids: list[int]) -> dict[int, str]:
    """The text each unknown token stands for (minilm-l6 reads most Chinese characters as [UNK]: the explanation
    showed [UNK] where the user wrote 关关雎鸠), from a fast tokenizer's offsets."""
    unk = tokenizer.unk_token_id
    if unk is None or unk not in ids or not getattr(tokenizer, "is_fast", False):
        return {}
    offsets = tokenizer(text, truncation=True, max_length=len(ids), return_offsets_mapping=True)["offset_mapping"]
    return {i: text[start:end] for i, (t, (start, end)) in enumerate(zip(ids, offsets, strict=False))
            if t == unk and end > start}
