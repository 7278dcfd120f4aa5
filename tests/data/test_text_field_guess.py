"""The default text field of JSON rows is guessed over several rows, and ids are never the text.

chinese-poetry's Tang files hold {author, paragraphs, title, id}: a quatrain's lines (24 characters)
are shorter than its UUID (36), so a guess from the first row alone read half the poems as ids.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llmkit.data.ingest import iter_records
from llmkit.errors import UserError

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def texts(path: Path, **kw) -> list[str]:
    return [r["text"] for r in iter_records([str(path)], task="lm", **kw)]


def test_short_poem_with_long_id_reads_the_poem(tmp_path: Path):
    rows = [{"author": "李白", "paragraphs": ["白玉誰家郎，回車渡天津。", "看花東上陌，驚動洛陽人。"],
             "title": "洛陽陌", "id": "7f968ba8-1a23-4916-8b55-97f03e8cfe1e"}]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    assert texts(path) == ["白玉誰家郎，回車渡天津。\n看花東上陌，驚動洛陽人。"]


def test_field_chosen_over_rows_not_the_first_one(tmp_path: Path):
    # The first row's summary is longer than its body; over the file the body is the long field.
    rows = [{"summary": "a fairly long summary line", "body": "short"}] + [
        {"summary": "brief", "body": f"a much longer body of text, number {i}, than any summary"} for i in range(5)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert texts(path)[0] == "short"
    assert texts(path, text_field="summary")[0] == "a fairly long summary line"


def test_an_id_alone_is_not_text(tmp_path: Path):
    path = tmp_path / "ids.jsonl"
    path.write_text(json.dumps({"id": "7f968ba8-1a23-4916-8b55-97f03e8cfe1e", "n": "12"}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="no text field"):
        texts(path)


@pytest.mark.parametrize("name", ["poet.tang.1000.json", "poet.tang.2000.json"])
def test_tang_files_read_as_poems(shared_data: Path, name: str):
    poems = texts(shared_data / "chinese_poetry" / name)
    assert len(poems) >= 1000
    assert not [p for p in poems if UUID.fullmatch(p)]
    assert all("，" in p or "。" in p for p in poems[:50])
