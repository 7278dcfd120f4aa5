"""Files as users export them: Excel's semicolon CSV, chat JSONL mixing layouts with a comma left after a line,
a folder holding a binary file, a Parquet table with empty label cells. Each row is read right or counted as bad
with its file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.data.ingest import IngestStats, iter_records
from llmkit.errors import UserError


def excel_csv(path: Path, sep_line: bool = False) -> Path:
    """What Excel in a comma-decimal locale saves as "CSV UTF-8": BOM, CRLF, ';' between cells, '4,5' numbers,
    a cell with a line break and doubled quotes, a trailing empty column, a header with spaces and capitals."""
    rows = ['Text ;LABEL;Score;',
            '"WIN a prize; call now";spam;4,5;',
            '"line one\nsays ""hi""";Ham;12,25;',
            'plain text, with a comma;SPAM ;0,5;']
    body = ("sep=;\r\n" if sep_line else "") + "\r\n".join(rows) + "\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    return path


@pytest.mark.parametrize("sep_line", [False, True])
def test_an_excel_semicolon_csv_reads_its_cells_not_commas(tmp_path, sep_line):
    path = excel_csv(tmp_path / "export.csv", sep_line)
    recs = list(iter_records([str(path)], task="classify"))
    assert [(r["text"], r["label"]) for r in recs] == [
        ("WIN a prize; call now", "spam"), ('line one\nsays "hi"', "Ham"), ("plain text, with a comma", "SPAM")]
    first = 3 if sep_line else 2
    assert [r["source"].rsplit(":", 1)[1] for r in recs] == [str(first), str(first + 1), str(first + 3)]


def test_a_semicolon_row_with_a_cell_too_many_names_semicolons(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("text;label\nfine;a\nnot fine;b;c\nalso fine;b\n")
    with pytest.raises(UserError, match=r"x\.csv:3: 3 cells where the header has 2.*semicolons"):
        list(iter_records([str(path)], task="classify"))


def test_a_comma_csv_whose_texts_hold_semicolons_stays_comma_separated(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('text,label\n"a; b; c",x\nd; e,y\nf,x\n')
    assert [(r["text"], r["label"]) for r in iter_records([str(path)], task="classify")] == [
        ("a; b; c", "x"), ("d; e", "y"), ("f", "x")]


def test_a_one_column_csv_of_texts_with_a_semicolon_stays_one_column(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text("first; with a semicolon\nsecond\nthird one\n")
    assert [r["text"] for r in iter_records([str(path)], task="lm")] == [
        "first; with a semicolon", "second", "third one"]


def test_chat_jsonl_of_mixed_layouts_reads_every_line(tmp_path):
    lines = [
        json.dumps({"prompt": "What is 2+2?", "response": "4."}),
        "",
        json.dumps({"Question": "Capital of France?", "Answer": "Paris.", "system": "Be brief."}) + ",",
        json.dumps({"instruction": "Translate", "input": "cat", "output": "chat"}),
        json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}),
        json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}) + " ,",
        json.dumps({"input": "2*3", "output": "6"}),
        json.dumps({"prompt": "p", "completion": "c"}),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    stats = IngestStats()
    recs = list(iter_records([str(path)], task="chat", stats=stats))
    assert stats.bad == 0
    assert [r["source"].rsplit(":", 1)[1] for r in recs] == ["1", "3", "4", "5", "6", "7", "8"]
    assert recs[0]["messages"] == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]
    assert recs[1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert recs[1]["messages"][2] == {"role": "assistant", "content": "Paris."}


def test_a_line_that_is_only_a_comma_is_a_bad_record_with_its_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n,\n")
    with pytest.raises(UserError, match=r"c\.jsonl:2: invalid JSON"):
        list(iter_records([str(path)], task="chat"))


def test_a_binary_file_in_a_folder_says_how_to_leave_it_out_or_is_skipped_and_listed(tmp_path):
    folder = tmp_path / "docs"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.txt").write_text("a document\n")
    (folder / "nested" / "b.txt").write_text("another document\n")
    (folder / "nested" / "blob.txt").write_bytes(bytes(range(256)))
    (folder / "z.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match=r"blob\.txt: looks like a binary file.*--exclude 'blob\.txt'.*--skip-bad"):
        list(iter_records([str(folder)], task="lm"))
    stats = IngestStats()
    texts = [r["text"] for r in iter_records([str(folder)], task="lm", skip_bad=True, stats=stats)]
    assert texts == ["a document\n", "another document\n"]
    reasons = {Path(f).name: why for f, why in stats.skipped}
    assert reasons["blob.txt"].startswith("unreadable: looks like a binary file")
    assert "pass --encoding cp1252" in reasons["z.txt"]


def test_a_parquet_cell_without_a_label_says_empty_label(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"Text": ["one", "two"], "Label": ["a", None]}), path)
    with pytest.raises(UserError, match=r"t\.parquet:2: empty label in field 'Label'"):
        list(iter_records([str(path)], task="classify"))
