"""`llmkit.data.prepare` end to end on the shared data sets and on small files made here.

Real files, a real SQLite registry in tmp_path, no mocks. Each shared set is prepared once per
session (module fixtures) and the behaviours are checked on the result.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from llmkit.config import DataConfig
from llmkit.data import prepare
from llmkit.data.dedupe import signatures
from llmkit.data.tokenizer import load_tokenizer
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SPLITS = ("train", "val", "test")


class Env:
    """A workspace with its registry, and prepare() bound to them."""

    def __init__(self, root: Path):
        self.ws = Workspace.open(root)
        self.registry = Registry.for_workspace(self.ws.root)

    def prepare(self, inputs, **options):
        return prepare(DataConfig(inputs=[str(p) for p in inputs], **options), self.ws, self.registry)

    def datasets(self) -> list[str]:
        return sorted(p.name for p in (self.ws.root / "datasets").iterdir())


def records(ds, split: str) -> list[dict]:
    with open(ds.path / "records" / f"{split}.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def texts(ds, split: str) -> list[str]:
    return [r["text"] if "text" in r else json.dumps(r["messages"]) for r in records(ds, split)]


def shard(ds, split: str) -> np.memmap:
    return np.memmap(ds.path / ds.manifest["shards"][split], dtype=ds.manifest["shard_dtype"], mode="r")


@pytest.fixture
def env(tmp_path) -> Env:
    return Env(tmp_path / "ws")


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    env = Env(tmp_path_factory.mktemp("shakespeare"))
    return env, env.prepare([SHARED / "tinyshakespeare" / "input.txt"], name="shakespeare", task="lm", tokenizer="char")


@pytest.fixture(scope="module")
def sms(tmp_path_factory):
    env = Env(tmp_path_factory.mktemp("sms"))
    return env, env.prepare([SHARED / "smsspam" / "SMSSpamCollection.tsv"], name="sms", task="classify", tokenizer="bpe:300")


# -- the shared data sets --------------------------------------------------------------------------


def test_tinyshakespeare_lm_char_counts_and_shards(shakespeare):
    _, ds = shakespeare
    m = ds.manifest
    source = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    assert m["counts"]["ingested"] == m["counts"]["kept"] == sum(m["splits"][s]["records"] for s in SPLITS)
    assert m["counts"]["ingested"] == pytest.approx(len(source) / 8000, rel=0.1)  # chunks of ~data.chunk_chars
    assert all(m["splits"][s]["records"] > 0 for s in SPLITS)
    assert m["tokenizer"]["kind"] == "wordlevel" and m["tokenizer"]["vocab_size"] == len(set(source)) + 7
    assert m["shard_dtype"] == "uint16"
    eos = m["tokenizer"]["eos_token_id"]
    for split in SPLITS:
        ids = shard(ds, split)
        s = m["splits"][split]
        assert len(ids) == s["tokens"] == s["chars"] + s["documents"]  # one id per character, one separator per document
        assert int((ids == eos).sum()) == s["documents"] == s["records"]
        assert ids[0] == eos
    tok = load_tokenizer(ds.path / "tokenizer" / "tokenizer.json")
    ids = np.asarray(shard(ds, "val"))
    cut = np.flatnonzero(ids == eos)
    assert tok.backend.decode(ids[cut[0] + 1:cut[1]].tolist()) == records(ds, "val")[0]["text"]


def test_preparing_again_finds_the_same_version(shakespeare):
    env, first = shakespeare
    again = env.prepare([SHARED / "tinyshakespeare" / "input.txt"], name="shakespeare", task="lm", tokenizer="char")
    assert again.existed and not first.existed
    assert (again.id, again.version, again.path) == (first.id, first.version, first.path)
    assert again.manifest["content_hash"] == first.manifest["content_hash"]
    assert len(env.registry.list("dataset")) == 1
    assert env.datasets() == [first.path.name]


def test_smsspam_classify_counts_labels_and_plots(sms):
    _, ds = sms
    m = ds.manifest
    c = m["counts"]
    assert c["ingested"] == 5574  # every line of the file (README)
    assert c["duplicates_exact"] > 300 and c["duplicates_near"] > 0  # the collection repeats many messages
    assert c["kept"] == c["ingested"] - c["duplicates_exact"] - c["duplicates_near"] - c["too_short"] - c["too_long"]
    assert m["label_set"] == ["ham", "spam"]
    for split in SPLITS:
        assert set(m["labels"][split]) == {"ham", "spam"}  # stratified: both labels in every split
        assert sum(m["labels"][split].values()) == m["splits"][split]["records"]
        assert all(r["label"] in ("ham", "spam") and r["text"] for r in records(ds, split))
    assert m["pii"].get("PHONE", 0) > 0 and any("<PHONE>" in t for t in texts(ds, "train"))
    assert m["shards"] is None and not (ds.path / "shards").exists()
    assert (ds.path / "plots" / "lengths.png").stat().st_size > 1000
    assert (ds.path / "plots" / "labels.png").stat().st_size > 1000


def test_splits_are_disjoint_and_no_near_duplicate_crosses_them(sms):
    _, ds = sms
    by_split = {s: texts(ds, s) for s in SPLITS}
    assert not set(by_split["train"]) & set(by_split["val"])
    assert not set(by_split["train"]) & set(by_split["test"])
    assert not set(by_split["val"]) & set(by_split["test"])
    sigs = {s: [x for x in signatures(t) if x is not None] for s, t in by_split.items()}
    train = np.stack(sigs["train"])
    held_out = np.stack(sigs["val"] + sigs["test"])
    threshold = ds.manifest["options"]["near_threshold"]
    for i in range(0, len(held_out), 64):
        similarity = (held_out[i:i + 64, None, :] == train[None, :, :]).mean(axis=2)
        assert similarity.max() < threshold


def test_chinese_poetry_lm_bpe_with_a_file_of_another_layout_skipped(env):
    # shijing.json keeps its verses in `content`, the others in `paragraphs`: --skip-bad counts its poems.
    ds = env.prepare([SHARED / "chinese_poetry" / "*.json"], name="poetry", task="lm", tokenizer="bpe:300",
                     text_field="paragraphs", skip_bad=True)
    m = ds.manifest
    assert m["counts"]["bad"] == 305 and "shijing.json" in m["bad_examples"][0]
    assert "no field 'paragraphs'" in m["bad_examples"][0]
    assert m["counts"]["ingested"] == 366 + 1000 + 1000 + 1002 + 280
    assert m["counts"]["kept"] + m["counts"]["duplicates_exact"] + m["counts"]["duplicates_near"] == m["counts"]["ingested"]
    first = records(ds, "train")[0]["text"]
    assert "，" in first and "\n" in first  # Chinese punctuation and the line per couplet survive
    tok = load_tokenizer(ds.path / "tokenizer" / "tokenizer.json")
    ids = np.asarray(shard(ds, "train"))
    eos = m["tokenizer"]["eos_token_id"]
    assert int((ids == eos).sum()) == m["splits"]["train"]["documents"]
    cut = np.flatnonzero(ids == eos)
    assert tok.backend.decode(ids[cut[0] + 1:cut[1]].tolist()) == first


def test_instruct_small_chat_conversations(env):
    ds = env.prepare([SHARED / "instruct_small"], name="chat", task="chat", tokenizer="bpe:300")
    m = ds.manifest
    assert m["counts"]["ingested"] == 100 + 175  # one conversation per OASST tree and per seed task
    for rec in records(ds, "train"):
        roles = [msg["role"] for msg in rec["messages"]]
        assert roles[0] in ("system", "user") and roles[-1] == "assistant"
    config = json.loads((ds.path / "tokenizer" / "tokenizer_config.json").read_text())
    assert config["chat_template"].startswith("{% for message in messages %}")
    chars = sum(m["splits"][s]["chars"] for s in SPLITS)
    assert sum(m["splits"][s]["tokens"] for s in SPLITS) > chars / 4


# -- versions --------------------------------------------------------------------------------------


def test_adding_records_later_moves_no_existing_record_to_another_split(env, tmp_path):
    lines = (SHARED / "smsspam" / "SMSSpamCollection.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    data = tmp_path / "sms.tsv"
    data.write_text("".join(lines[:1500]), encoding="utf-8")
    v1 = env.prepare([data], name="sms", task="classify", tokenizer="bpe:300")
    data.write_text("".join(lines[:3000]), encoding="utf-8")
    v2 = env.prepare([data], name="sms", task="classify", tokenizer="bpe:300")
    assert (v1.version, v2.version) == (1, 2) and not v2.existed
    assert v1.manifest["content_hash"] != v2.manifest["content_hash"] and v1.path != v2.path and v1.path.exists()
    later = {t: s for s in SPLITS for t in texts(v2, s)}
    for split in SPLITS:
        assert all(later[t] == split for t in texts(v1, split))
    assert [r.version for r in env.registry.list("dataset", "sms")] == [1, 2]


def test_other_options_make_another_version_of_the_same_name(env, tmp_path):
    data = tmp_path / "a.txt"
    data.write_text("Some text here.\n\nAnd more text there.\n", encoding="utf-8")
    v1 = env.prepare([data], name="small", tokenizer="char", doc_split="file", splits={"val": 0, "test": 0})
    v2 = env.prepare([data], name="small", tokenizer="char", doc_split="line", splits={"val": 0, "test": 0})
    assert (v1.version, v2.version) == (1, 2)
    assert v2.manifest["counts"]["kept"] == 2 and v1.manifest["counts"]["kept"] == 1


def test_worker_processes_change_nothing_in_the_output(tmp_path, monkeypatch):
    text = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:400_000]
    data = tmp_path / "s.txt"
    data.write_text(text + "\n\n" + text[:50_000].replace("Citizen:", "Citizan:"), encoding="utf-8")  # near copies
    outputs = []
    for workers in ("0", "2"):
        monkeypatch.setenv("LLMKIT_DATA_WORKERS", workers)
        ds = Env(tmp_path / f"ws{workers}").prepare([data], name="s", tokenizer="bpe:300", chunk_chars=2000)
        assert ds.manifest["timings"]["workers"] == int(workers)
        outputs.append({p.relative_to(ds.path).as_posix(): p.read_bytes()
                        for p in sorted(ds.path.rglob("*")) if p.suffix in (".jsonl", ".bin", ".json") and p.name != "manifest.json"})
        outputs[-1]["counts"] = json.dumps(ds.manifest["counts"]).encode()
    assert json.loads(outputs[0]["counts"])["duplicates_near"] > 0
    assert outputs[0] == outputs[1]


def test_byte_ranges_cover_a_records_file_in_whole_lines(tmp_path):
    from llmkit.data.workers import byte_ranges

    lines = [b'{"text": "' + b"x" * n + b'"}\n' for n in (0, 5, 40, 3, 200, 1, 64, 7)]
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"".join(lines))
    for size in (1, 16, 45, 1000):
        ranges = list(byte_ranges(path, size))
        assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # contiguous, no gaps
        data = path.read_bytes()
        assert all(data[end - 1:end] == b"\n" for _, end in ranges)
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert list(byte_ranges(tmp_path / "empty.jsonl")) == []


# -- options ---------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


PII_ROWS = [{"text": "Write to jane.doe@example.com or call +44 20 7946 0958 today."},
            {"text": "Nothing personal in this line at all."},
            {"text": "Another clean line of ordinary text."}]


@pytest.mark.parametrize(("mode", "kept", "redacted"), [("redact", 3, True), ("drop", 2, False),
                                                         ("report", 3, False), ("keep", 3, False)])
def test_pii_modes(env, tmp_path, mode, kept, redacted):
    ds = env.prepare([write_jsonl(tmp_path / "p.jsonl", PII_ROWS)], tokenizer="char", pii=mode, splits={"val": 0, "test": 0})
    all_text = " ".join(texts(ds, "train"))
    assert ds.manifest["counts"]["kept"] == kept
    assert ds.manifest["counts"]["pii_dropped"] == 3 - kept
    assert ds.manifest["pii"] == ({} if mode == "keep" else {"EMAIL": 1, "PHONE": 1})
    assert ("<EMAIL>" in all_text) == redacted
    assert ("jane.doe@example.com" in all_text) == (mode in ("report", "keep"))


def test_dedupe_options(env, tmp_path):
    rows = [{"text": "The same line of text, said once."}, {"text": "the same line   of text, said once."},
            {"text": "Something else entirely different."}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    base = dict(tokenizer="char", splits={"val": 0, "test": 0})
    assert env.prepare([path], name="d1", dedupe="exact", **base).manifest["counts"]["duplicates_exact"] == 1
    assert env.prepare([path], name="d2", dedupe="none", **base).manifest["counts"]["kept"] == 3


def test_large_vocabularies_make_uint32_shards(env, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(70_000)}}
    big = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    big.pre_tokenizer = pre_tokenizers.Whitespace()
    big.save(str(tmp_path / "big.json"))
    ds = env.prepare([write_jsonl(tmp_path / "b.jsonl", [{"text": "w69999 w1 w2"}, {"text": "w3 nope"}])],
                     tokenizer=str(tmp_path / "big.json"), splits={"val": 0, "test": 0})
    assert ds.manifest["shard_dtype"] == "uint32" and ds.manifest["tokenizer"]["vocab_size"] > 2**16
    ids = shard(ds, "train")
    eos = ds.manifest["tokenizer"]["eos_token_id"]
    assert ids.dtype == np.uint32 and ids.tolist() == [eos, 70_000, 2, 3, eos, 4, 0]


# -- bad input: one clear line, and nothing left behind -------------------------------------------


def _bad_jsonl(tmp: Path) -> tuple[list[Path], dict]:
    path = tmp / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "broken\n{"text": "fine too"}\n', encoding="utf-8")
    return [path], {}


def _missing_field(tmp: Path) -> tuple[list[Path], dict]:
    return [write_jsonl(tmp / "m.jsonl", [{"body": "hello", "title": "t"}])], {"text_field": "text"}


def _missing_column(tmp: Path) -> tuple[list[Path], dict]:
    (tmp / "c.csv").write_text("message,category\nhello,a\n", encoding="utf-8")
    return [tmp / "c.csv"], {"task": "classify", "label_field": "label"}


def _nothing_left(tmp: Path) -> tuple[list[Path], dict]:
    return [write_jsonl(tmp / "s.jsonl", [{"text": "short"}, {"text": "tiny"}])], {"min_chars": 100}


def _no_records(tmp: Path) -> tuple[list[Path], dict]:
    (tmp / "e.csv").write_text("text\n\n", encoding="utf-8")
    return [tmp / "e.csv"], {}


def _all_bad(tmp: Path) -> tuple[list[Path], dict]:
    (tmp / "w.csv").write_text("text,label\na,b,c\n", encoding="utf-8")
    return [tmp / "w.csv"], {"task": "classify", "skip_bad": True}


def _undecodable(tmp: Path) -> tuple[list[Path], dict]:
    with gzip.open(tmp / "l.txt.gz", "wb") as fh:
        fh.write(b"caf\xe9 au lait\n")
    return [tmp / "l.txt.gz"], {}


def _broken_tokenizer(tmp: Path) -> tuple[list[Path], dict]:
    # Fails after the records are written: the temporary folder must still go.
    (tmp / "tok.json").write_text("{not json", encoding="utf-8")
    return [write_jsonl(tmp / "ok.jsonl", PII_ROWS)], {"tokenizer": str(tmp / "tok.json"), "splits": {"val": 0, "test": 0}}


@pytest.mark.parametrize(("make", "message"), [
    (_bad_jsonl, r"bad\.jsonl:2: invalid JSON \(.+\)"),
    (_missing_field, r"m\.jsonl:1: no field 'text' \(fields: body, title\)"),
    (_missing_column, r"c\.csv: no column 'label' \(columns: message, category\)"),
    (_nothing_left, r"nothing left after filtering: 2 records read; removed 2 by data\.min_chars=100"),
    (_no_records, r"no records in .*e\.csv: the files hold no text"),
    (_all_bad, r"every record was bad \(1 skipped under --skip-bad\), the first: .*w\.csv:2: 3 cells where the header has 2"),
    (_undecodable, r"l\.txt\.gz: cannot decode byte 0xe9 at offset 3 .*--encoding"),
    (_broken_tokenizer, r"data\.tokenizer = '.*tok\.json': not a tokenizers tokenizer\.json"),
])
def test_bad_input_is_one_line_and_leaves_no_folder_and_no_record(env, tmp_path, make, message):
    inputs, options = make(tmp_path)
    with pytest.raises(UserError, match=message) as info:
        env.prepare(inputs, **{"tokenizer": "char", **options})
    assert "\n" not in str(info.value)
    assert env.datasets() == []  # no version folder and no .tmp- leftovers
    assert env.registry.list("dataset") == []


def test_undecodable_input_reads_with_the_right_encoding(env, tmp_path):
    inputs, _ = _undecodable(tmp_path)
    ds = env.prepare(inputs, tokenizer="char", encoding="latin-1", splits={"val": 0, "test": 0})
    assert texts(ds, "train") == ["café au lait"]


def test_skip_bad_skips_and_counts_malformed_lines(env, tmp_path):
    inputs, _ = _bad_jsonl(tmp_path)
    ds = env.prepare(inputs, tokenizer="char", skip_bad=True, splits={"val": 0, "test": 0})
    assert ds.manifest["counts"]["bad"] == 1 and ds.manifest["counts"]["kept"] == 2
    assert "bad.jsonl:2: invalid JSON" in ds.manifest["bad_examples"][0]


def test_dataset_names_cannot_escape_the_workspace(env, tmp_path):
    with pytest.raises(UserError, match="dataset name '../evil'"):
        env.prepare([write_jsonl(tmp_path / "x.jsonl", PII_ROWS)], name="../evil", tokenizer="char")
    assert env.datasets() == []
