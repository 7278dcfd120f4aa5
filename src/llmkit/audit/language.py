"""Which language a causal LM was trained on, read from its tokenizer: the vocabulary a tokenizer
learnt is a fingerprint of its training text, and it is there for every model, registered or a folder."""

from __future__ import annotations

import re

_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile("[A-Za-z]{2}")
_LATIN_LETTER = re.compile("[A-Za-z]")


def model_language(tokenizer) -> tuple[str, str]:
    """("zh" or "en", why): zh when more vocabulary entries decode to CJK text than to Latin words.

    Entries are decoded one by one, so the byte pieces of a byte-level BPE (half a character) count for
    neither; single letters count for neither either (every byte-level vocabulary holds the alphabet).
    """
    size = len(tokenizer)
    texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=True)
    cjk = sum(bool(_CJK.search(t)) for t in texts)
    latin = sum(bool(_LATIN_WORD.search(t)) for t in texts)
    what = "Latin words"
    if not cjk and not latin:  # a character vocabulary: its single letters are all the evidence there is
        latin, what = sum(bool(_LATIN_LETTER.fullmatch(t)) for t in texts), "single Latin letters (a character vocabulary)"
    lang = "zh" if cjk > latin else "en"
    return lang, (f"{lang} from the tokenizer: {cjk:,} of its {size:,} entries are Chinese or Japanese text, "
                  f"{latin:,} {what}")
