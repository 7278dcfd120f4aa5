"""Symbolic links in a data folder: one leading out of the folder (to /etc/passwd, a home directory) is skipped
and reported, not read as training text; links within the folder and a link named as an input are read."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.data.discover import expand_inputs
from llmkit.data.ingest import IngestStats, iter_records
from llmkit.errors import UserError


@pytest.fixture
def linked(tmp_path) -> tuple[Path, Path]:
    outside = tmp_path / "private"
    outside.mkdir()
    (outside / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (outside / "deep").mkdir()
    (outside / "deep" / "more.txt").write_text("another secret\n")
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("a document\n")
    (data / "sub" / "b.txt").write_text("b document\n")
    (data / "link.txt").symlink_to(outside / "secret.txt")
    (data / "inside.txt").symlink_to(data / "sub" / "b.txt")  # the same file twice: read once
    (data / "alias.txt").symlink_to(Path("sub") / "b.txt")
    (data / "elsewhere").symlink_to(outside, target_is_directory=True)
    return data, outside


def test_a_link_out_of_the_folder_is_skipped_and_reported(linked):
    data, outside = linked
    skipped: list[tuple[str, str]] = []
    found = expand_inputs([str(data)], skipped=skipped)
    assert all(p.resolve().is_relative_to(data.resolve()) for p in found), found
    assert sorted(p.resolve().name for p in found) == ["a.txt", "b.txt"]  # inside.txt and alias.txt are b.txt
    reasons = {Path(p).name: why for p, why in skipped}
    assert reasons["link.txt"] == "link outside the folder"
    assert "secret" not in " ".join(str(p) for p in found)


def test_no_line_of_the_linked_file_reaches_the_records(linked):
    data, _ = linked
    stats = IngestStats()
    texts = [r["text"] for r in iter_records([str(data)], task="lm", stats=stats)]
    assert not any("root:" in t or "another secret" in t for t in texts), texts
    assert ("link outside the folder" in {why for _, why in stats.skipped})


def test_a_glob_skips_a_link_out_of_its_folder_too(linked):
    data, _ = linked
    skipped: list[tuple[str, str]] = []
    found = expand_inputs([str(data / "*.txt")], skipped=skipped)
    assert sorted(p.resolve().name for p in found) == ["a.txt", "b.txt"]
    assert ("link outside the folder" in {why for _, why in skipped})


def test_a_link_named_as_an_input_is_read(linked):
    data, _ = linked
    found = expand_inputs([str(data / "link.txt")])
    assert [p.name for p in found] == ["link.txt"]


def test_a_folder_of_links_out_only_says_so(tmp_path, linked):
    _, outside = linked
    only = tmp_path / "only"
    only.mkdir()
    (only / "x.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(UserError, match="link outside the folder") as err:
        expand_inputs([str(only)])
    assert "name a linked file itself as an input" in str(err.value)


def test_a_linked_data_folder_named_as_an_input_is_walked(tmp_path, linked):
    data, _ = linked
    (tmp_path / "mydata").symlink_to(data, target_is_directory=True)
    found = expand_inputs([str(tmp_path / "mydata")])
    assert sorted(p.resolve().name for p in found) == ["a.txt", "b.txt"]
