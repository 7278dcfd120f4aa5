"""JSON typed with a Chinese input method: the one-line error names the full-width '，' '：' '“' where json stopped
("Expecting ',' delimiter" at a character that looks like one), in JSONL and in a JSON array alike."""

from __future__ import annotations

import pytest

from llmkit.data.ingest import iter_records
from llmkit.errors import UserError


def _error(path) -> str:
    with pytest.raises(UserError) as info:
        list(iter_records([str(path)], task="lm"))
    return str(info.value)


def test_a_full_width_comma_colon_or_quote_in_jsonl_is_named(tmp_path):
    path = tmp_path / "数据.jsonl"
    path.write_text('{"text": "好"}\n{"text": "坏"，"x": 1}\n', encoding="utf-8")
    assert _error(path) == (f"{path}:2: invalid JSON (Expecting ',' delimiter at column 13); the '，' there is "
                            "full-width (a Chinese input method's): JSON needs the ASCII ',' outside strings")
    path.write_text('{“text”: "好"}\n', encoding="utf-8")
    assert _error(path).endswith("the '“' there is full-width (a Chinese input method's): JSON needs the ASCII '\"' "
                                 "outside strings")


def test_a_full_width_colon_in_a_json_array_is_named(tmp_path):
    path = tmp_path / "诗.json"
    path.write_text('[\n  {"text"："床前明月光"}\n]\n', encoding="utf-8")
    assert _error(path) == (f"{path}:2: invalid JSON (Expecting ':' delimiter); the '：' there is full-width "
                            "(a Chinese input method's): JSON needs the ASCII ':' outside strings")


def test_full_width_punctuation_inside_strings_is_text_and_other_errors_get_no_hint(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text('{"text": "你好，世界：“引号”"}\n', encoding="utf-8")
    assert [r["text"] for r in iter_records([str(path)], task="lm")] == ["你好，世界：“引号”"]
    path.write_text('{"text": "好",}\n', encoding="utf-8")
    assert "full-width" not in _error(path)
