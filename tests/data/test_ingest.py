"""Ingest: every input format into records, the bad-input messages, and bounded memory.

Small cases are written into tmp_path so each expectation is exact; the real data sets in
../shared/data check that the readers cope with what users actually have.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import time
import tracemalloc
from pathlib import Path

import pytest

from llmkit.data import json_array
from llmkit.data.chat_layouts import oasst_messages
from llmkit.data.ingest import IngestStats, expand_inputs, iter_records
from llmkit.errors import UserError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared data sets not present")


def records(path, **kw):
    kw.setdefault("task", "lm")
    return list(iter_records([str(path)], **kw))


def error(path, **kw) -> str:
    with pytest.raises(UserError) as info:
        records(path, **kw)
    return str(info.value)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return path


# -- discovery ---------------------------------------------------------------------------------------


def test_folder_recursive_sorted_known_extensions_only(tmp_path):
    for name in ["b.txt", "a.jsonl", "sub/c.csv.gz", "sub/d.parquet", "README.md", "img.png", ".git/x.txt", "z/.h.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in expand_inputs([str(tmp_path)])]
    assert found == ["a.jsonl", "b.txt", "sub/c.csv.gz", "sub/d.parquet"]


def test_globs_files_and_duplicates(tmp_path):
    for name in ["x1.txt", "x2.txt", "y.jsonl", "deep/x3.txt"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("t")
    assert [p.name for p in expand_inputs([str(tmp_path / "x*.txt")])] == ["x1.txt", "x2.txt"]
    assert [p.name for p in expand_inputs([str(tmp_path / "**" / "*.txt")])] == ["x3.txt", "x1.txt", "x2.txt"]
    both = expand_inputs([str(tmp_path / "x1.txt"), str(tmp_path / "*.txt"), str(tmp_path / "y.jsonl")])
    assert [p.name for p in both] == ["x1.txt", "x2.txt", "y.jsonl"]


def test_discovery_errors_name_the_input(tmp_path):
    pattern = str(tmp_path / "nothing*.jsonl")
    with pytest.raises(UserError, match=re.escape(pattern)):
        expand_inputs([pattern])
    (tmp_path / "notes.docx").write_text("x")
    with pytest.raises(UserError, match=r"notes\.docx: unsupported file type; supported: \.txt \.md .*\.parquet"):
        expand_inputs([str(tmp_path / "notes.docx")])
    with pytest.raises(UserError, match="matches no .txt"):
        expand_inputs([str(tmp_path / "*.docx")])
    (tmp_path / "notes.md").write_text("# Notes\n\nplain text, read as .txt is\n")  # a folder of Markdown is text
    assert expand_inputs([str(tmp_path / "*.md")]) == [tmp_path / "notes.md"]
    with pytest.raises(UserError, match="no such file or folder"):
        expand_inputs([str(tmp_path / "missing.txt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no"):
        expand_inputs([str(tmp_path / "empty")])
    with pytest.raises(UserError, match="no inputs"):
        expand_inputs([])


# -- plain text --------------------------------------------------------------------------------------

TXT = "第一行 line one\nline two\n\n\n  \nthird para\r\nstill third\n"


@pytest.mark.parametrize("zipped", [False, True])
def test_txt_doc_splits(tmp_path, zipped):
    path = gz(tmp_path / "a.txt.gz", TXT) if zipped else write(tmp_path / "a.txt", TXT)
    whole = records(path, doc_split="file")
    assert whole == [{"text": TXT.replace("\r\n", "\n"), "source": f"{path}:1"}]
    paras = records(path, doc_split="blank-line")
    assert [(r["text"], r["source"]) for r in paras] == [
        ("第一行 line one\nline two", f"{path}:1"), ("third para\nstill third", f"{path}:6")]
    lines = records(path, doc_split="line")
    assert [r["text"] for r in lines] == ["第一行 line one", "line two", "third para", "still third"]
    assert [r["source"].rsplit(":", 1)[1] for r in lines] == ["1", "2", "6", "7"]


def test_txt_is_for_lm_only_and_must_not_be_empty(tmp_path):
    path = write(tmp_path / "a.txt", "hello")
    assert "suits --task lm only" in error(path, task="classify")
    assert error(write(tmp_path / "e.txt", " \n\n"), doc_split="file") == f"{tmp_path / 'e.txt'}: empty file"


def test_utf8_bom_is_dropped(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,label\n你好,a\n".encode())
    assert records(path, task="classify") == [{"text": "你好", "label": "a", "source": f"{path}:2"}]


# -- JSON --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.ndjson"])
def test_jsonl(tmp_path, name):
    body = '{"text": "诗 one", "label": "a"}\n\n{"text": "two", "label": 3}\n'
    path = gz(tmp_path / name, body) if name.endswith(".gz") else write(tmp_path / name, body)
    assert records(path, task="classify") == [
        {"text": "诗 one", "label": "a", "source": f"{path}:1"},
        {"text": "two", "label": "3", "source": f"{path}:3"},
    ]


@pytest.mark.parametrize("chunk", [7, 1 << 16])
def test_json_array_streams_with_start_lines(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(json_array, "_CHUNK", chunk)  # tiny chunks: every value straddles a boundary
    items = [{"text": f"doc {i} " + "字" * i, "n": 12345678901234567890 + i} for i in range(30)]
    path = write(tmp_path / "a.json", "[\n" + ",\n".join(json.dumps(x, ensure_ascii=False, indent=1) for x in items) + "\n]\n")
    got = records(path)
    assert [r["text"] for r in got] == [x["text"] for x in items]
    lines = path.read_text().split("\n")
    assert all(lines[int(r["source"].rsplit(":", 1)[1]) - 1] == "{" for r in got)


def test_json_single_object_and_empty_array(tmp_path):
    assert records(write(tmp_path / "o.json", ' {"content": "only one"} \n')) == [
        {"text": "only one", "source": f"{tmp_path / 'o.json'}:1"}]
    assert records(write(tmp_path / "e.json", "[ ]")) == []
    assert records(gz(tmp_path / "g.json.gz", '[{"text": "zipped"}]'))[0]["text"] == "zipped"


def test_json_syntax_errors_always_raise_with_line(tmp_path):
    path = write(tmp_path / "bad.json", '[{"text": "a"},\n {"text": "b"}\n {"text": "c"}]')
    # like json.loads, the error points at the token where the comma was missing
    assert error(path, skip_bad=True) == f"{path}:3: invalid JSON (Expecting ',' delimiter)"
    path = write(tmp_path / "cut.json", '[{"text": "a"},\n {"text": "b')
    assert error(path).startswith(f"{path}:2: invalid JSON (Unterminated string")


# -- CSV / TSV ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("zipped", [False, True])
def test_csv_with_header(tmp_path, zipped):
    body = 'id,Text,Label\n1,"multi\nline, with comma",pos\n2,plain,neg\n'
    path = gz(tmp_path / "a.csv.gz", body) if zipped else write(tmp_path / "a.csv", body)
    assert records(path, task="classify") == [
        {"text": "multi\nline, with comma", "label": "pos", "source": f"{path}:2"},
        {"text": "plain", "label": "neg", "source": f"{path}:4"},
    ]
    assert [r["text"] for r in records(path, text_field="2")] == ["pos", "neg"]  # index into the header


def test_csv_header_found_by_requested_names(tmp_path):
    path = write(tmp_path / "a.csv", "sms,kind\nhello there,x\n")
    assert records(path, task="classify", text_field="sms", label_field="kind")[0]["label"] == "x"
    assert error(path, task="classify", text_field="body", label_field="kind") == (
        f"{path}: no column 'body' (columns: sms, kind); pass --text-field")


def test_headerless_tsv_guesses_short_label_and_long_text(tmp_path):
    path = write(tmp_path / "a.tsv", 'ham\t"quoted" start, no closing\nspam\tWIN a prize now!!!\n\nham\tok\n')
    got = records(path, task="classify")
    assert [(r["label"], r["text"]) for r in got] == [
        ("ham", '"quoted" start, no closing'), ("spam", "WIN a prize now!!!"), ("ham", "ok")]
    assert got[2]["source"] == f"{path}:4"
    assert [r["text"] for r in records(path, task="classify", text_field="0", label_field="1")] == ["ham", "spam", "ham"]
    assert "no header row; columns: 0, 1); pass --text-field with a column index" in error(path, text_field="sms")


def test_a_row_of_another_width_is_a_bad_record_saying_so(tmp_path):
    """An unquoted comma cut "hello, world" to "hello" and made " world" the label; a short row was blamed on
    --label-field."""
    path = write(tmp_path / "a.csv", "text,label\nhello world,ham\nhello, world,spam\nshort\ntrailing,ham,\n")
    assert error(path, task="classify") == (f'{path}:3: 3 cells where the header has 2 (text, label); put a cell '
                                            'holding commas in double quotes ("hello, world")')
    stats = IngestStats()
    got = list(iter_records([str(path)], task="classify", skip_bad=True, stats=stats))
    assert [(r["text"], r["label"]) for r in got] == [("hello world", "ham"), ("trailing", "ham")]  # empty extras are fine
    assert stats.bad_reasons == {"columns": 2} and stats.bad_examples[1] == (
        f"{path}:4: 1 cells where the header has 2 (text, label); each row needs every column (an empty one as "
        "nothing between two commas)")
    headerless = write(tmp_path / "b.tsv", "ham\tfine\nspam\tone\ttab too many\nham\tok\n")
    assert error(headerless, task="classify") == (f"{headerless}:2: 3 cells where the file's rows have 2 (no header "
                                                  "row); a tab inside a cell splits it (TSV has no quoting)")


def test_headerless_csv_for_lm_uses_the_long_column(tmp_path):
    path = write(tmp_path / "a.csv", "1,some long text\n2,more long text\n")
    assert [r["text"] for r in records(path)] == ["some long text", "more long text"]


# -- Parquet -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("zipped", [False, True])
def test_parquet(tmp_path, zipped):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"id": list(range(2500)), "review": [f"评论 {i}" for i in range(2500)], "label": [i % 2 for i in range(2500)]})
    path = tmp_path / "a.parquet"
    pq.write_table(table, path, row_group_size=1000)
    if zipped:
        packed = tmp_path / "a.parquet.gz"
        packed.write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
        path = packed
    got = records(path, task="classify")
    assert len(got) == 2500
    assert got[1] == {"text": "评论 1", "label": "1", "source": f"{path}:2"}
    assert error(path, task="classify", label_field="y") == f"{path}: no column 'y' (columns: id, review, label); pass --label-field"


# -- chat --------------------------------------------------------------------------------------------


def test_chat_layouts(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                      {"role": "assistant", "content": "hello"}]},
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"instruction": "Translate", "input": "猫", "output": "cat"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Classify", "instances": [{"input": "x", "output": "1"}, {"input": "", "output": "2"}]},
    ]
    path = write(tmp_path / "c.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    got = [r["messages"] for r in records(path, task="chat")]
    assert got[0][0] == {"role": "system", "content": "be brief"}
    assert got[1] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert got[2] == [{"role": "user", "content": "Translate\n\n猫"}, {"role": "assistant", "content": "cat"}]
    assert got[3][0]["content"] == "Say hi"
    assert [m[0]["content"] for m in got[4:]] == ["Classify\n\nx", "Classify"]


@pytest.mark.parametrize(("messages", "why"), [
    ([{"role": "user", "content": "q"}], "ends with a user turn"),
    ([{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}],
     "message 2 is user where assistant was expected"),
    ([{"role": "assistant", "content": "a"}], "message 1 is assistant where user was expected"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}], "message 2 (assistant) has no text"),
    ([{"role": "robot", "content": "q"}], "has role 'robot'"),
    # the spellings read as the three roles, and the way past such a record, are named
    ([{"role": "用户", "content": "q"}], "has role '用户'; roles: system, user, assistant (also read as them: human, "
                                         "prompter, gpt, bot, model, chatgpt); --skip-bad skips such records"),
])
def test_chat_validation(tmp_path, messages, why):
    path = write(tmp_path / "c.jsonl", json.dumps({"messages": messages}))
    assert why in error(path, task="chat")


def _msg(role, text, rank=None, replies=(), deleted=False):
    return {"role": role, "text": text, "rank": rank, "deleted": deleted, "replies": list(replies)}


def test_oasst_follows_best_rank_and_trims_unanswered_prompt(tmp_path):
    tree = _msg("prompter", "Q1", replies=[
        _msg("assistant", "A1 rank 1", rank=1, replies=[_msg("prompter", "wrong branch")]),
        _msg("assistant", "A1 deleted", rank=0, deleted=True),
        _msg("assistant", "A1 rank 0", rank=0, replies=[
            _msg("prompter", "Q2 first", replies=[
                _msg("assistant", "A2 unranked"),
                _msg("assistant", "A2 rank 2", rank=2, replies=[_msg("prompter", "Q3 never answered")]),
            ]),
            _msg("prompter", "Q2 second"),
        ]),
    ])
    assert [m["content"] for m in oasst_messages(tree)] == ["Q1", "A1 rank 0", "Q2 first", "A2 rank 2"]
    path = write(tmp_path / "t.jsonl", json.dumps({"message_tree_id": "x", "prompt": tree}))
    (got,) = records(path, task="chat")
    assert [m["role"] for m in got["messages"]] == ["user", "assistant", "user", "assistant"]
    lonely = write(tmp_path / "l.jsonl", json.dumps({"prompt": _msg("prompter", "no answer")}))
    assert "no user or assistant turns" in error(lonely, task="chat")


@needs_shared
def test_instruct_small_chat():
    stats = IngestStats()
    got = list(iter_records([str(SHARED / "instruct_small" / "*.jsonl")], task="chat", stats=stats))
    assert stats.files == 2 and stats.bad == 0 and stats.rows == len(got) == 275  # 100 trees + 175 tasks
    for rec in got:
        roles = [m["role"] for m in rec["messages"]]
        assert roles[-1] == "assistant" and roles[0] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False))
    first = json.loads((SHARED / "instruct_small" / "oasst_en_100_tree.jsonl").open().readline())
    best = next(r for r in first["prompt"]["replies"] if r["rank"] == 0)
    assert got[0]["messages"][1]["content"] == best["text"]


# -- real data sets ----------------------------------------------------------------------------------


@needs_shared
def test_smsspam_classify():
    stats = IngestStats()
    got = list(iter_records([str(SHARED / "smsspam" / "SMSSpamCollection.tsv")], task="classify", stats=stats))
    assert len(got) == stats.rows == 5574 and stats.bad == 0
    assert collections.Counter(r["label"] for r in got) == {"ham": 4827, "spam": 747}
    assert got[0]["text"].startswith("Go until jurong point")
    assert got[-1]["source"].endswith("SMSSpamCollection.tsv:5574")


@needs_shared
def test_chinese_poetry():
    tang = list(iter_records([str(SHARED / "chinese_poetry" / "tangshi300.json")], task="lm", text_field="paragraphs"))
    assert len(tang) == 366
    assert tang[0]["text"] == "西陸蟬聲唱，南冠客思侵。\n那堪玄鬢影，來對白頭吟。\n露重飛難進，風多響易沈。\n無人信高潔，誰爲表予心。"
    # shijing keeps its stanzas in `content`, one of the default text names
    shijing = list(iter_records([str(SHARED / "chinese_poetry" / "shijing.json")], task="lm"))
    assert len(shijing) == 305 and shijing[0]["text"].startswith("关关雎鸠，在河之洲。")
    stats = IngestStats()
    got = list(iter_records([str(SHARED / "chinese_poetry" / "poet.tang.*.json")], task="lm",
                            text_field="paragraphs", stats=stats, skip_bad=True))
    assert stats.files == 3 and stats.rows + stats.bad == 3002 and stats.rows == len(got) > 2900


@needs_shared
@pytest.mark.parametrize("split", ["file", "blank-line", "line"])
def test_tinyshakespeare(split):
    path = SHARED / "tinyshakespeare" / "input.txt"
    text = path.read_text(encoding="utf-8")
    got = list(iter_records([str(path)], task="lm", doc_split=split))
    if split == "file":
        assert got == [{"text": text, "source": f"{path}:1"}]
    elif split == "line":
        assert [r["text"] for r in got] == [ln for ln in text.split("\n") if ln.strip()]
    else:
        assert [r["text"] for r in got] == [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


# -- bad input ---------------------------------------------------------------------------------------


def test_a_jsonl_line_cut_short_is_placed_at_its_own_end(tmp_path):
    path = write(tmp_path / "cut.jsonl", '{"text":"hello world one"}\n{"text":"second line ok"\r\n{"text":"third"}\n')
    # its line break read as part of the JSON put the error at "column 1" (of the next line)
    assert error(path) == f"{path}:2: invalid JSON (Expecting ',' delimiter at column 25)"


def test_invalid_json_line_and_missing_field(tmp_path):
    path = write(tmp_path / "data.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", oops}\n{"txt": "c", "label": "y"}\n')
    assert error(path) == f"{path}:2: invalid JSON (Expecting property name enclosed in double quotes at column 15)"
    assert error(path, text_field="txt") == f"{path}:1: no field 'txt' (fields: text, label); pass --text-field"
    third = write(tmp_path / "third.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n{"txt": "c", "label": "y"}\n')
    assert error(third, task="classify") == f"{third}:2: no field 'label' (fields: text); pass --label-field"


def test_skip_bad_counts_and_keeps_five_examples(tmp_path):
    lines = ['{"text": "good"}', "not json", '{"text": ""}', '{"text": "   "}', '{"other": 1}', "[1]",
             '{"text": 5}', '{"text": "good too"}']
    path = write(tmp_path / "d.jsonl", "\n".join(lines))
    stats = IngestStats()
    got = records(path, skip_bad=True, stats=stats)
    assert [r["text"] for r in got] == ["good", "good too"]
    assert (stats.files, stats.rows, stats.bad, len(stats.bad_examples)) == (1, 2, 6, 5)
    assert stats.bytes == path.stat().st_size
    assert stats.bad_examples[0].startswith(f"{path}:2: invalid JSON (")
    assert stats.bad_examples[1] == f"{path}:3: empty text in field 'text'"
    assert "expected an object" in stats.bad_examples[4]


def test_undecodable_bytes_report_offset(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("ok 诗\n".encode() + b"caf\xe9\n")
    msg = error(path, doc_split="line")
    assert msg == f"{path}: cannot decode byte 0xe9 at offset 10 as utf-8; it reads as Western European: pass --encoding cp1252"
    assert records(path, doc_split="line", encoding="latin-1")[1]["text"] == "café"
    # Past the first 1 MiB block of the offset search, with that block ending mid-character.
    big = tmp_path / "late.jsonl"
    big.write_bytes(b'{"text":  "' + "é".encode() * 600_000 + b'"}\n{"text": "\xff"}\n')
    assert f"0xff at offset {11 + 1_200_000 + 3 + 10} as utf-8" in error(big)
    # a codec's own complaint, not a byte it cannot decode: one line too, with the hint
    assert error(path, doc_split="line", encoding="utf-16") == (
        f"{path}: cannot decode as utf-16 (UTF-16 stream does not start with BOM); it reads as Western European: "
        "pass --encoding cp1252")


def test_binary_file_and_unknown_encoding(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert "looks like a binary file" in error(path) and ".parquet" in error(path)
    assert "unknown encoding 'nope'" in error(write(tmp_path / "a.txt", "x"), encoding="nope")
    bad_gz = tmp_path / "b.txt.gz"
    bad_gz.write_bytes(b"not gzip at all")
    assert "broken gzip data" in error(bad_gz)


# -- streaming ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "line"), [("big.txt", "a fairly ordinary line of text {}\n"),
                                            ("big.jsonl", '{{"text": "row {}"}}\n')])
def test_first_record_does_not_read_the_whole_file(tmp_path, name, line):
    path = tmp_path / name
    with path.open("w") as f:
        for chunk in range(200):
            f.write("".join(line.format(chunk * 1000 + i) for i in range(1000)))
    assert path.stat().st_size > 4_000_000
    tracemalloc.start()
    try:
        start = time.perf_counter()
        gen = iter_records([str(path)], task="lm", doc_split="line")
        first = next(gen)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    gen.close()
    assert "0" in first["text"] and first["source"] == f"{path}:1"
    assert peak < 1_000_000 and elapsed < 1.0


def test_json_array_memory_is_bounded(tmp_path):
    path = tmp_path / "big.json"
    with path.open("w") as f:
        f.write("[" + ",".join(json.dumps({"text": f"doc {i} " + "x" * 200}) for i in range(12000)) + "]")
    tracemalloc.start()
    try:
        count = sum(1 for _ in iter_records([str(path)], task="lm"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 12000 and peak < 1_000_000 < path.stat().st_size


def test_without_text_field_the_longest_textual_field_is_the_text(shared_data):
    rec = next(iter_records([str(shared_data / "chinese_poetry" / "poet.tang.0.json")], task="lm"))
    assert "\n" in rec["text"] and len(rec["text"]) > 20  # the poem's lines, not its author or title


def test_a_table_with_chinese_column_names_has_its_header_and_fields_found(tmp_path):
    """A header of 文本,类别 was read as a record, its 类别 a class of one example."""
    path = write(tmp_path / "诗.csv", "文本,类别\n床前明月光，疑是地上霜。,唐诗\n明月几时有，把酒问青天。,宋词\n")
    assert [(r["text"], r["label"]) for r in records(path, task="classify")] == [
        ("床前明月光，疑是地上霜。", "唐诗"), ("明月几时有，把酒问青天。", "宋词")]
    assert [r["text"] for r in records(path)] == ["床前明月光，疑是地上霜。", "明月几时有，把酒问青天。"]
    lines = write(tmp_path / "诗.jsonl", '{"内容": "关关雎鸠，在河之洲。", "标签": "诗经"}\n')
    assert [(r["text"], r["label"]) for r in records(lines, task="classify")] == [("关关雎鸠，在河之洲。", "诗经")]
    # a given flag still wins, and an English label column is still the default's first choice
    both = write(tmp_path / "both.csv", "text,label,标签\nhello there,en,英\n")
    assert records(both, task="classify")[0]["label"] == "en"
    assert records(both, task="classify", label_field="标签")[0]["label"] == "英"
