"""`llmkit predict --file`: the texts it reads, and a file it cannot read said in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.cli.predict import _read_texts
from llmkit.errors import UserError


def test_a_file_that_is_not_utf8_names_the_encoding_it_reads_as_and_how_to_convert_it(tmp_path: Path) -> None:
    # a GBK file from a Chinese Windows said only "save it as UTF-8"; data prepare names the encoding
    file = tmp_path / "短信.txt"
    file.write_bytes("恭喜您中奖了，请点击链接领取奖品\n今天晚上六点在公司门口见面吧\n".encode("gbk"))
    with pytest.raises(UserError) as err:
        _read_texts(file)
    assert str(err.value) == (f"{file}: not UTF-8 text at byte 0; it reads as Simplified Chinese: convert it "
                              f"(iconv -f gb18030 -t utf-8 {file} > utf8.txt) (predict reads UTF-8 only)")
    file.write_text("\ufeff恭喜您中奖了\n\n今天见\n", encoding="utf-8")  # a BOM is not part of the first text
    assert _read_texts(file) == ["恭喜您中奖了", "今天见"]
