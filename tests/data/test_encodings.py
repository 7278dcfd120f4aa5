"""The encoding named when a file is not UTF-8: one that decodes it into the text it holds."""

from __future__ import annotations

import pytest

from llmkit.data.encodings import likely_encodings
from llmkit.data.ingest import iter_records
from llmkit.errors import UserError

POEM_SIMPLIFIED = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n春眠不觉晓，处处闻啼鸟。\n"
POEM_TRADITIONAL = "床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。\n春眠不覺曉，處處聞啼鳥。\n"


@pytest.mark.parametrize("text, encoding, first", [
    (POEM_SIMPLIFIED, "gbk", "gb18030"),
    (POEM_SIMPLIFIED, "gb18030", "gb18030"),
    (POEM_TRADITIONAL, "big5", "big5"),  # decodes as GB18030 too, into rare characters
    ("これは日本語のテキストです。\n", "shift_jis", "shift_jis"),
    ("café au lait, crème brûlée\n", "latin-1", "cp1252"),
])
def test_the_likeliest_encoding_decodes_the_text_it_was_saved_from(text, encoding, first):
    found = likely_encodings(text.encode(encoding))
    assert found[0][0] == first
    assert text.encode(encoding).decode(found[0][0]) == text


def test_the_error_names_the_encoding_and_taking_it_reads_the_text(tmp_path):
    """It said "pass --encoding (e.g. latin-1)", which decodes any bytes: the dataset was mojibake."""
    path = tmp_path / "gbk.txt"
    path.write_bytes(POEM_SIMPLIFIED.encode("gbk"))
    with pytest.raises(UserError, match=r"as utf-8; it reads as Simplified Chinese: pass --encoding gb18030$"):
        list(iter_records([str(path)], task="lm"))
    assert [r["text"] for r in iter_records([str(path)], task="lm", encoding="gb18030")] == [POEM_SIMPLIFIED]
    noise = tmp_path / "noise.bin.txt"
    noise.write_bytes(bytes([0x81, 0x20, 0xFF, 0x80]) * 4)  # nothing decodes it
    with pytest.raises(UserError, match=r"pass --encoding with the one it was saved in$"):
        list(iter_records([str(noise)], task="lm"))
