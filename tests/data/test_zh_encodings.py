"""Files a Chinese Windows user saves: Notepad's and Excel's "Unicode" (UTF-16 with a byte order mark) reads as
text, like a UTF-8 file with a BOM; UTF-16 without a BOM says which --encoding reads it instead of "binary file"."""

from __future__ import annotations

import codecs
import csv
import json

import pytest

from llmkit.data.ingest import iter_records
from llmkit.errors import UserError

LINES = [{"text": f"第{i}条：春眠不觉晓，处处闻啼鸟。"} for i in range(3)]
BODY = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in LINES)


def records(path, **kw):
    kw.setdefault("task", "lm")
    return list(iter_records([str(path)], **kw))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be-bom", "utf-32", "utf-8-sig"])
def test_a_file_with_a_byte_order_mark_reads_as_what_the_mark_says(tmp_path, encoding):
    path = tmp_path / "语料.jsonl"
    if encoding == "utf-16-be-bom":
        path.write_bytes(codecs.BOM_UTF16_BE + BODY.encode("utf-16-be"))
    else:
        path.write_bytes(BODY.encode(encoding))
    assert [r["text"] for r in records(path)] == [line["text"] for line in LINES]


def test_excel_unicode_text_export_is_a_utf16_tsv_with_chinese_headers(tmp_path):
    path = tmp_path / "评论.tsv"
    with open(path, "w", encoding="utf-16", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["文本", "标签"])
        writer.writerow(["物流很快，很满意", "正面"])
        writer.writerow(["质量太差了", "负面"])
    got = records(path, task="classify")
    assert [(r["text"], r["label"]) for r in got] == [("物流很快，很满意", "正面"), ("质量太差了", "负面")]


def test_a_plain_text_file_in_utf16_keeps_its_paragraphs(tmp_path):
    path = tmp_path / "诗.txt"
    path.write_bytes("床前明月光\n\n疑是地上霜\n".encode("utf-16"))
    assert [r["text"] for r in records(path, doc_split="blank-line")] == ["床前明月光", "疑是地上霜"]


@pytest.mark.parametrize("order", ["le", "be"])
def test_utf16_without_a_byte_order_mark_names_the_encoding_that_reads_it(tmp_path, order):
    path = tmp_path / "no-bom.jsonl"
    path.write_bytes(BODY.encode(f"utf-16-{order}"))
    with pytest.raises(UserError) as info:
        records(path)
    assert str(info.value) == (f"{path}: looks like UTF-16 text without a byte order mark (NUL byte at offset "
                               f"{0 if order == 'be' else 1}); pass --encoding utf-16-{order}, or save it as UTF-8")
    assert [r["text"] for r in records(path, encoding=f"utf-16-{order}")] == [line["text"] for line in LINES]


def test_binary_data_is_still_called_binary(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(UserError) as info:
        records(path)
    assert "looks like a binary file (NUL byte at offset 8)" in str(info.value)
