"""Which files `data prepare` reads: licence and readme files skipped by default and reported, --include and
--exclude globs, and the chinese_poetry folder whose licence used to be read as a poem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.data.discover import default_skip_reason, describe_skipped, expand_inputs
from llmkit.data.ingest import IngestStats, iter_records
from llmkit.errors import UserError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
POETRY = SHARED / "chinese_poetry"


@pytest.fixture
def folder(tmp_path) -> Path:
    files = {
        "LICENSE.upstream.txt": "MIT License\n\nCopyright (c) 2016 JackeyGao\n",
        "README.md": "# poems\n",
        "readme.txt": "read me first\n",
        "COPYING": "GPL\n",
        "Licence-MIT.txt": "MIT\n",
        "NOTICE.txt": "notice\n",
        "sub/CHANGELOG.txt": "v1\n",
        "poems.jsonl": "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in ["床前明月光", "疑是地上霜"]),
        "sub/more.txt": "舉頭望明月\n",
        "cover.png": "x",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def names(paths) -> list[str]:
    return [Path(p).name for p in paths]


def test_licence_readme_notice_and_changelog_names_are_skipped_whatever_the_case_and_extension():
    for name in ("LICENSE", "license.md", "LICENCE.upstream.txt", "COPYING.LESSER", "Notice.txt", "README.rst",
                 "readme.zh-CN.txt", "CHANGELOG.json", "changelog"):
        assert default_skip_reason(name) is not None, name
    for name in ("poems.json", "icensed.txt", "my_readme.txt", "news.txt"):
        assert default_skip_reason(name) is None, name


def test_a_folder_walk_skips_them_and_records_why(folder):
    skipped: list[tuple[str, str]] = []
    found = expand_inputs([str(folder)], skipped=skipped)
    assert names(found) == ["poems.jsonl", "more.txt"]
    reasons = {Path(p).name: why for p, why in skipped}
    assert reasons == {
        "COPYING": "licence file", "LICENSE.upstream.txt": "licence file", "Licence-MIT.txt": "licence file",
        "NOTICE.txt": "notice file", "README.md": "readme file", "readme.txt": "readme file",
        "CHANGELOG.txt": "changelog file", "cover.png": "unsupported file type",
    }
    assert describe_skipped(sorted(skipped)[:2], limit=1) == "2 files: COPYING (licence file), and 1 more"


def test_include_overrides_the_default_skip_and_chooses_files(folder):
    skipped: list[tuple[str, str]] = []
    found = expand_inputs([str(folder)], include=["LICENSE*", "*.jsonl"], skipped=skipped)
    assert names(found) == ["LICENSE.upstream.txt", "poems.jsonl"]
    assert dict((Path(p).name, why) for p, why in skipped)["more.txt"] == "not matched by --include"
    # a path below the folder matches too, and --exclude wins over --include
    assert names(expand_inputs([str(folder)], include=["sub/*"])) == ["CHANGELOG.txt", "more.txt"]
    assert names(expand_inputs([str(folder)], include=["sub/*"], exclude=["CHANGELOG*"])) == ["more.txt"]


def test_exclude_without_include_keeps_the_default_skip(folder):
    skipped: list[tuple[str, str]] = []
    assert names(expand_inputs([str(folder)], exclude=["*.txt"], skipped=skipped)) == ["poems.jsonl"]
    assert ("more.txt", "excluded by --exclude *.txt") in [(Path(p).name, why) for p, why in skipped]


def test_globs_skip_too_but_a_file_named_as_an_input_is_read(folder):
    assert names(expand_inputs([str(folder / "**" / "*.txt")])) == ["more.txt"]
    assert names(expand_inputs([str(folder / "LICENSE.upstream.txt")])) == ["LICENSE.upstream.txt"]
    # skipped by the folder walk but named as well: read, and not reported as skipped
    skipped: list[tuple[str, str]] = []
    found = expand_inputs([str(folder), str(folder / "readme.txt")], skipped=skipped)
    assert names(found) == ["poems.jsonl", "more.txt", "readme.txt"]
    assert "readme.txt" not in names(p for p, _ in skipped) and "README.md" in names(p for p, _ in skipped)


def test_a_file_whose_name_looks_like_a_glob_is_read_as_named(tmp_path):
    (tmp_path / "my[data].txt").write_text("text\n")
    (tmp_path / "myd.txt").write_text("the glob's match\n")
    assert names(expand_inputs([str(tmp_path / "my[data].txt")])) == ["my[data].txt"]
    assert names(expand_inputs([str(tmp_path / "my[dx].txt")])) == ["myd.txt"]  # no such file: a pattern


def test_an_input_left_empty_by_the_skip_says_what_was_skipped_and_how_to_choose(folder):
    only_meta = folder / "meta"
    only_meta.mkdir()
    (only_meta / "LICENSE.txt").write_text("MIT\n")
    with pytest.raises(UserError, match=r"meta: the folder holds no .* \(skipped 1 file: LICENSE\.txt \(licence file\); "
                                        r"choose files with --include GLOB\)"):
        expand_inputs([str(only_meta)])
    with pytest.raises(UserError, match=r"the pattern matches no .*skipped 1 file: LICENSE\.txt"):
        expand_inputs([str(only_meta / "*.txt")])
    with pytest.raises(UserError, match=r"file of the folder is left by the globs .*not matched by --include.*; "
                                        r"check the --include/--exclude globs\)"):  # not "holds no": it holds them
        expand_inputs([str(folder)], include=["*.csv"])


def test_iter_records_counts_the_skipped_files(folder):
    stats = IngestStats()
    texts = [r["text"] for r in iter_records([str(folder)], task="lm", stats=stats)]
    assert texts == ["床前明月光", "疑是地上霜", "舉頭望明月\n"]
    assert stats.files == 2 and len(stats.skipped) == 8


@pytest.mark.skipif(not POETRY.exists(), reason="shared data not present")
def test_chinese_poetry_folder_reads_the_poems_only():
    stats = IngestStats()
    skipped: list[tuple[str, str]] = []
    files = expand_inputs([str(POETRY)], skipped=skipped)
    assert sorted(names(p for p, _ in skipped)) == ["LICENSE.upstream.txt", "README.md"]
    assert all(f.suffix == ".json" for f in files) and len(files) == 6
    first = next(iter(iter_records([str(POETRY)], task="lm", stats=stats, skip_bad=True)))
    assert "MIT" not in first["text"] and stats.skipped == skipped


def test_prepare_cli_reports_skipped_files_and_takes_include(folder, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    run = [sys.executable, "-m", "llmkit", "data", "prepare", str(folder), "--task", "lm", "--tokenizer", "char",
           "--name", "poems", "--include", "*.jsonl", "--include", "LICENSE*", "--exclude", "*.png",
           "--workspace", str(ws), "--json"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["counts"]["ingested"] == 3  # two poems and the licence, which --include asked for
    reasons = {Path(s["file"]).name: s["reason"] for s in result["skipped_files"]}
    assert reasons["README.md"] == "not matched by --include" and reasons["cover.png"] == "excluded by --exclude *.png"
    assert "LICENSE.upstream.txt" not in reasons
    # the skipped files are kept in the manifest, so the report shows them too
    report = subprocess.run([sys.executable, "-m", "llmkit", "data", "report", "poems", "--workspace", str(ws), "--json"],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert {Path(s["file"]).name: s["reason"] for s in json.loads(report.stdout)["skipped_files"]} == reasons


def test_include_and_exclude_come_from_the_config_file_too(folder, tmp_path):
    from llmkit.config.sections import DataConfig
    from llmkit.data.pipeline import prepare
    from llmkit.workspace import Workspace

    cfg = DataConfig(inputs=[str(folder)], tokenizer="char", name="chosen", include=["*.jsonl"], exclude=["sub/*"])
    ds = prepare(cfg, Workspace.open(tmp_path / "ws"))
    assert ds.manifest["counts"]["ingested"] == 2
    assert [Path(s["path"]).name for s in ds.manifest["sources"]] == ["poems.jsonl"]
    reasons = {Path(s["file"]).name: s["reason"] for s in ds.manifest["skipped_files"]}
    assert reasons["CHANGELOG.txt"] == "excluded by --exclude sub/*"
