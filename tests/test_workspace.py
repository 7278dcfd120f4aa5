"""Workspace resolution and atomic artifact folders, including a writer killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import KINDS, TMP_PREFIX, Workspace, atomic_dir, resolve_workspace

# -- resolution --------------------------------------------------------------------------------------


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A current folder and an $LLMKIT_HOME, both set, and a third folder for --workspace."""
    paths = {name: tmp_path / name for name in ("cwd", "env", "flag")}
    paths["cwd"].mkdir()
    monkeypatch.chdir(paths["cwd"])
    monkeypatch.setenv("LLMKIT_HOME", str(paths["env"]))
    return paths


def test_the_workspace_flag_wins_over_llmkit_home_and_the_current_folder(places: dict[str, Path]) -> None:
    assert resolve_workspace(places["flag"]) == places["flag"]
    assert resolve_workspace(str(places["flag"])) == places["flag"]


def test_llmkit_home_wins_over_the_current_folder(places: dict[str, Path]) -> None:
    assert resolve_workspace(None) == places["env"]


def test_without_flag_or_llmkit_home_the_workspace_is_in_the_current_folder(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMKIT_HOME")
    assert resolve_workspace(None) == places["cwd"] / "llmkit-workspace"
    assert resolve_workspace("relative") == places["cwd"] / "relative"


def test_opening_a_workspace_creates_its_folders(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    assert ws.root == tmp_path / "ws"
    assert all((ws.root / kind).is_dir() for kind in KINDS)
    assert ws.folder("models", "tiny") == ws.root / "models" / "tiny"


@pytest.mark.parametrize("name", ["../../../outside", "../models2/x", "/tmp/abs", "a/../../b", "a/b", ".", ""])
def test_a_folder_outside_its_kind_folder_is_refused(tmp_path: Path, name: str) -> None:
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(UserError, match="outside the workspace"):
        ws.folder("models", name)


def test_a_symlink_out_of_the_workspace_is_refused(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    (tmp_path / "elsewhere").mkdir()
    (ws.root / "models" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="outside the workspace"):
        ws.folder("models", "link")


def test_new_folders_are_distinct_and_inside(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    folders = {ws.new_folder("models", "tiny-int8") for _ in range(50)}
    # what made a folder is said once: a default name such as tiny-int8-weight already says it
    assert ws.new_folder("models", "tiny-int8-weight", "int8-weight").name.startswith("tiny-int8-weight-")
    assert ws.new_folder("models", "tiny-int8-weight", "int8-weight").name.count("int8-weight") == 1
    assert ws.new_folder("models", "prod", "merged").name.startswith("prod-merged-")
    assert ws.new_folder("models", "nano-magnitude-50", "magnitude").name.count("magnitude") == 1
    assert len(folders) == 50 and all(f.parent == ws.root / "models" and f.name.startswith("tiny-int8-") for f in folders)


def test_a_missing_workspace_is_an_error_when_not_creating(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no workspace at"):
        Workspace.open(tmp_path / "nowhere", create=False)
    assert not (tmp_path / "nowhere").exists()


def test_a_file_as_workspace_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        Workspace.open(tmp_path / "file")
    # below a file: a NotADirectoryError, exit 1
    with pytest.raises(UserError, match=r"cannot make the workspace .*file/sub: Not a directory .*pass --workspace with a folder"):
        Workspace.open(tmp_path / "file" / "sub")


# -- atomic_dir --------------------------------------------------------------------------------------


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


def test_atomic_dir_creates_the_target_only_when_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "models" / "tiny"
    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"new")
        assert tmp.parent == target.parent and tmp.name.startswith(f"{TMP_PREFIX}{os.getpid()}-")
        assert not target.exists()
    assert (target / "weights.bin").read_bytes() == b"new"
    assert _leftovers(target.parent) == []


def test_weights_saved_by_safetensors_are_as_readable_as_the_rest_of_the_folder(tmp_path: Path) -> None:
    """safetensors' save_file writes 0600 (through a temporary file): a model folder had a config others could
    read beside weights they could not (a team's shared workspace, a server run as another user)."""
    import torch
    from safetensors.torch import save_file

    from llmkit.workspace import UMASK

    target = tmp_path / "models" / "tiny"
    with atomic_dir(target) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text("{}")
    modes = {p.name: p.stat().st_mode & 0o777 for p in target.iterdir()}
    assert modes == {"model.safetensors": 0o666 & ~UMASK, "config.json": 0o666 & ~UMASK}, modes


def test_atomic_dir_replaces_an_existing_folder_whole(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    (target / "weights.bin").write_bytes(b"old")

    with atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"new")
        assert (target / "old.bin").exists()  # the old version stays readable until the swap

    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]
    assert (target / "weights.bin").read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


def test_an_exception_inside_atomic_dir_leaves_the_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    target.mkdir()
    (target / "weights.bin").write_bytes(b"old")

    with pytest.raises(RuntimeError, match="disk on fire"), atomic_dir(target) as tmp:
        (tmp / "weights.bin").write_bytes(b"half")
        raise RuntimeError("disk on fire")

    assert sorted(p.name for p in target.iterdir()) == ["weights.bin"]
    assert (target / "weights.bin").read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_opening_a_workspace_keeps_the_temp_folder_of_a_live_writer(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    with atomic_dir(ws.folder("models", "tiny")) as tmp:
        (tmp / "weights.bin").write_bytes(b"in progress")
        Workspace.open(ws.root)
        assert tmp.is_dir()
    assert (ws.folder("models", "tiny") / "weights.bin").exists()


# -- a writer killed with SIGKILL --------------------------------------------------------------------

KILLED_WRITER = r"""
import pathlib, sys, time
from llmkit.registry import Registry
from llmkit.workspace import Workspace, atomic_dir
root, url, marker, stop_at = sys.argv[1:5]
ws = Workspace.open(root)
reg = Registry(url)
target = ws.folder("models", "tiny")
with atomic_dir(target) as tmp:
    (tmp / "weights.bin").write_bytes(b"w" * 4096)
    if stop_at == "inside":
        pathlib.Path(marker).touch()
        time.sleep(120)
if stop_at == "after-rename":
    pathlib.Path(marker).touch()
    time.sleep(120)
reg.add("model", "tiny", path=target)
"""


def _start_and_kill_writer(root: Path, url: str, stop_at: str, tmp_path: Path) -> int:
    """Run KILLED_WRITER until it signals it reached `stop_at`, then SIGKILL it; its pid."""
    marker = tmp_path / f"reached-{stop_at}"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(root), url, str(marker), stop_at],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the writer never reached its stop"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()  # reaps it: a zombie would still look alive to the stale-temp check
    assert proc.returncode == -signal.SIGKILL
    return proc.pid


def test_a_writer_killed_inside_atomic_dir_leaves_no_artifact_and_no_row(registry_url: str, tmp_path: Path) -> None:
    root = tmp_path / "ws"
    pid = _start_and_kill_writer(root, registry_url, "inside", tmp_path)

    models = root / "models"
    assert not (models / "tiny").exists()
    [leftover] = _leftovers(models)
    assert leftover.startswith(f"{TMP_PREFIX}{pid}-") and (models / leftover / "weights.bin").exists()
    reg = Registry(registry_url)
    assert reg.list() == []
    reg.close()

    Workspace.open(root)
    assert _leftovers(models) == []
    assert not (models / "tiny").exists()


def test_a_writer_killed_after_the_rename_leaves_a_whole_artifact_and_no_dangling_row(
    registry_url: str, tmp_path: Path
) -> None:
    root = tmp_path / "ws"
    _start_and_kill_writer(root, registry_url, "after-rename", tmp_path)

    target = root / "models" / "tiny"
    assert (target / "weights.bin").read_bytes() == b"w" * 4096
    Workspace.open(root)
    assert _leftovers(root / "models") == [] and target.is_dir()
    reg = Registry(registry_url)
    try:
        assert all(rec.path is None or Path(rec.path).exists() for rec in reg.list())
        assert reg.list() == []
    finally:
        reg.close()


# -- a workspace moved, copied, or shared through its registry -------------------------------------------


def test_a_moved_or_copied_workspace_reads_its_own_folders(tmp_path: Path, shared_data: Path):
    """The registry holds absolute paths: a workspace restored elsewhere pointed at the old place (missing, with advice
    to delete the records), and a copy read, and its adapters loaded the base of, the original. Records, lineage
    and an adapter's base are read against the workspace they are in now; another workspace's folders stay theirs."""
    import shutil

    from llmkit.config import DataConfig, SftConfig
    from llmkit.data.dataset import open_dataset
    from llmkit.data.pipeline import prepare
    from llmkit.models.io import adapter_base, load_causal_lm, resolve_model
    from llmkit.train import pretrain, sft
    from tests.conftest import run_cli, tiny_config

    first = tmp_path / "first"
    ws = Workspace.open(first)
    registry = Registry.for_workspace(first)
    (tmp_path / "s.txt").write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    prepare(DataConfig(inputs=[str(tmp_path / "s.txt")], name="tiny", task="lm", tokenizer="char",
                       doc_split="blank-line"), ws, registry)
    prepare(DataConfig(inputs=[str(shared_data / "instruct_small")], name="chats", task="chat", tokenizer="char",
                       skip_bad=True), ws, registry)
    pretrain(tiny_config(name="mv-base", max_steps=2, eval_every=2, checkpoint_every=2), ws, registry)
    sft(SftConfig(base="mv-base", data="chats", method="lora", max_steps=1, batch_size=2, max_length=64, skip_bad=True,
                  eval_max_examples=2, name="mv-lora"), ws, registry)
    registry.close()

    moved = tmp_path / "moved"
    shutil.copytree(first, moved)
    first.rename(tmp_path / "away")  # the old place is gone, as after a restore on another disk
    here = Registry.for_workspace(moved)
    lora = resolve_model("mv-lora", here)
    assert moved in lora.path.parents and moved in adapter_base(lora).path.parents
    assert moved in Path(lora.lineage["run"]["path"]).parents
    assert moved in open_dataset(here, "tiny").path.parents
    load_causal_lm(lora)  # the adapter on its base, both from here

    (tmp_path / "away").rename(first)  # both exist: the copy still reads its own, and rm removes its own
    assert moved in resolve_model("mv-lora", here).path.parents
    proc = run_cli("rm", "mv-lora", "--yes", workspace=moved)
    assert proc.returncode == 0, proc.stderr
    assert not lora.path.exists() and len(list((first / "models").glob("mv-lora-*"))) == 1

    # A third workspace sharing the first one's registry (as machines share a PostgreSQL one) reads the first's
    # folders where they are, and says whose they are when they are not reachable.
    shared = Registry.for_workspace(tmp_path / "third", db_url=f"sqlite:///{first / 'registry.db'}")
    assert first in resolve_model("mv-base", shared).path.parents
    first.rename(tmp_path / "away")
    with pytest.raises(UserError, match=r"^model mv-base:v1's files are at .*/first/models/mv-base-\w+, outside this "
                                        r"workspace \(.*/third\): another machine's"):
        resolve_model("mv-base", shared)
    with pytest.raises(UserError, match=r"^dataset tiny:v1's files are at .*, outside this workspace"):
        open_dataset(shared, "tiny")


# -- a workspace that cannot be written ---------------------------------------------------------------


@pytest.fixture
def read_only_workspace(tmp_path: Path):
    """A workspace on a read-only mount (as root, which writes through any folder mode), else in a folder mode 0555."""
    ws = Workspace.open(tmp_path / "ws")
    if os.geteuid() != 0:
        for kind in KINDS:
            (ws.root / kind).chmod(0o555)
        yield ws
        for kind in KINDS:
            (ws.root / kind).chmod(0o755)
        return
    view = tmp_path / "ro"
    view.mkdir()
    if subprocess.run(["mount", "--bind", str(ws.root), str(view)], capture_output=True).returncode != 0:
        pytest.skip("no read-only mount here (mount --bind refused) and root writes through folder modes")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True, capture_output=True)
        yield Workspace(view)
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)


def test_writing_into_a_read_only_workspace_is_one_line_naming_the_folder(read_only_workspace: Workspace) -> None:
    from llmkit.train.checkpoint import start_run

    target = read_only_workspace.root / "models" / "m-1"
    with pytest.raises(UserError) as err, atomic_dir(target) as tmp:
        (tmp / "weights").write_text("x")
    message = str(err.value)
    assert message.startswith(f"cannot write {target}: ") and TMP_PREFIX not in message
    assert "--workspace" in message and "\n" not in message
    assert not target.exists()

    with pytest.raises(UserError, match=r"cannot write .*/runs/r-\w+: .*--workspace"):
        start_run(read_only_workspace, None, "r", "pretrain", None, [])
