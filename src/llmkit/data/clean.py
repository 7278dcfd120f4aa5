"""Text cleaning: Unicode NFC, control characters out, whitespace normalized.

For `lm` (and chat contents) newlines and leading indentation survive, because code and verse
depend on them; for classification all whitespace folds to single spaces.
"""

from __future__ import annotations

import re
import unicodedata

# C0/C1 controls except \t and \n, the zero-width space and word joiner, and the BOM. The zero-width
# (non-)joiners U+200C/U+200D stay: Persian and Indic spelling and emoji sequences need them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2060\ufeff]")
_ODD_SPACE = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_ODD_NEWLINE = re.compile(r"[\x85\u2028\u2029]")  # NEL and the Unicode line/paragraph separators
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_MANY_BLANK = re.compile(r"\n{3,}")
_ANY_SPACE = re.compile(r"\s+")


def clean_text(text: str, keep_newlines: bool = True) -> str:
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
        text = _ODD_SPACE.sub(" ", text)
        text = _ODD_NEWLINE.sub("\n", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if not keep_newlines:
        return _ANY_SPACE.sub(" ", text).strip()
    # Substring tests first: they run at memory speed, and most texts need neither substitution.
    if " \n" in text or "\t\n" in text or text.endswith((" ", "\t")):
        text = _TRAILING.sub("", text)
    if "\n\n\n" in text:
        text = _MANY_BLANK.sub("\n\n", text)
    return text.strip("\n")


def chunk_document(text: str, chunk_chars: int) -> list[str]:
    """Cut a long document at line boundaries into pieces of about chunk_chars.

    One large file (tiny shakespeare) would otherwise be a single record: it could not be split
    into train/val, and near-duplicate detection would see only whole copies.
    """
    if chunk_chars <= 0 or len(text) <= chunk_chars:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = start + chunk_chars
        if end < len(text):
            # Prefer a paragraph break, then a line break, in the back half of the window.
            cut = text.rfind("\n\n", start + chunk_chars // 2, end)
            if cut == -1:
                cut = text.rfind("\n", start + chunk_chars // 2, end)
            end = cut + 1 if cut != -1 else end
        piece = text[start:end].strip("\n")
        if piece:
            pieces.append(piece)
        start = end
    return pieces
