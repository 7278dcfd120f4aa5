"""`llmkit gc` on a real workspace and SQLite registry: folders without records go (unless changed within the
hour), records without folders go (unless a shared registry, or things were made from them), failed runs go when
asked, and nothing goes without a yes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from llmkit.registry import Registry
from llmkit.registry.cleanup import GRACE_S, find_garbage
from llmkit.registry.run_state import ended_mark, running_mark
from llmkit.workspace import KINDS, Workspace


def _aged(path: Path) -> Path:
    old = time.time() - GRACE_S - 60
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            os.utime(os.path.join(dirpath, name), (old, old))
    os.utime(path, (old, old))
    return path


def _folder(ws: Workspace, kind: str, name: str, size: int = 1000) -> Path:
    path = ws.folder(kind, name)
    path.mkdir()
    (path / "weights.bin").write_bytes(b"x" * size)
    return path


@pytest.fixture
def workspace(tmp_path: Path):
    ws = Workspace.open(tmp_path / "ws")
    registry = Registry.for_workspace(ws.root)
    kept_model = registry.add("model", "kept", path=_aged(_folder(ws, "models", "kept-1")))
    orphan = _aged(_folder(ws, "models", "orphan-2", size=3 * 2**20))
    fresh = _folder(ws, "runs", "being-written-3")
    gone = registry.add("model", "gone", path=_folder(ws, "models", "gone-4"))
    made_from_gone = registry.add("dataset", "ds", path=_folder(ws, "datasets", "ds-5"))
    registry.add("model", "child", path=_aged(_folder(ws, "models", "child-6")), parents=[(made_from_gone.id, "trained_on")])
    failed = registry.add("run", "bad", path=_aged(_folder(ws, "runs", "bad-7")), metrics=ended_mark("failed", "boom"))
    finished = registry.add("run", "good", path=_aged(_folder(ws, "runs", "good-8")), metrics=ended_mark("finished"))
    running = registry.add("run", "busy", path=_aged(_folder(ws, "runs", "busy-9")), metrics=running_mark())
    exports = _aged(_folder(ws, "datasets", "feedback-exports"))  # what a dataset was prepared from, by its params
    registry.add("dataset", "fb", path=_aged(_folder(ws, "datasets", "fb-10")), params={"inputs": [str(exports / "x.jsonl")]})
    for rec in (gone, made_from_gone):
        __import__("shutil").rmtree(rec.path)
    return ws, registry, dict(kept=kept_model, orphan=orphan, fresh=fresh, gone=gone, made_from_gone=made_from_gone,
                              failed=failed, finished=finished, running=running)


def test_gc_finds_what_nothing_uses_and_leaves_the_rest(workspace):
    ws, registry, made = workspace
    garbage = find_garbage(registry, ws.root, KINDS)
    assert garbage.folders == [made["orphan"]] and garbage.bytes == 3 * 2**20
    assert [r.id for r in garbage.records] == [made["gone"].id] and garbage.runs == []
    kept = "\n".join(garbage.kept)
    assert "being-written-3" in kept and "changed in the last hour" in kept
    assert f"dataset {made['made_from_gone'].ref}" in kept and "things were made from it" in kept
    with_runs = find_garbage(registry, ws.root, KINDS, failed_runs=True)
    assert [r.id for r in with_runs.runs] == [made["failed"].id]  # not the finished one, nor the running one
    assert find_garbage(registry, ws.root, KINDS, protected={made["gone"].id}).records == []


def test_gc_calls_a_stray_file_a_file(workspace, cli_here):
    """A file left in models/ was listed as "folder, no record"."""
    ws = workspace[0]
    (ws.root / "models" / "notes.txt").write_text("x")
    _aged(ws.root / "models" / "notes.txt")
    out = cli_here("gc", "--dry-run", workspace=ws.root, check=True)
    assert out.stdout.count("file, no record") == 1 and out.stdout.count("folder, no record") == 1, out.stdout


def test_a_shared_registry_keeps_records_whose_folder_is_missing_here(workspace, tmp_path: Path):
    ws, registry, made = workspace
    shared = Registry(registry.url, ws.root)
    shared.url = "sqlite:///" + str(tmp_path / "elsewhere" / "team.db")  # read as a registry not the workspace's own
    garbage = find_garbage(shared, ws.root, KINDS)
    assert garbage.records == [] and any("the registry is shared" in line for line in garbage.kept)
    assert garbage.folders == [made["orphan"]]  # folders are matched by name, whoever registered them


def test_gc_cli_lists_asks_and_removes(workspace, cli_here, monkeypatch):
    ws, registry, made = workspace
    dry = cli_here("gc", "--dry-run", "--failed-runs", "--json", workspace=ws.root, check=True)
    listed = json.loads(dry.stdout)
    assert listed["removed"] is False and listed["folders"] == [str(made["orphan"])]
    assert listed["runs"] == [made["failed"].id] and made["orphan"].exists()
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(""))
    unanswered = cli_here("gc", workspace=ws.root)  # no terminal to ask on: one line, nothing removed
    assert unanswered.returncode == 2 and "pass --yes" in unanswered.stderr and made["orphan"].exists()
    done = cli_here("gc", "--failed-runs", "--yes", workspace=ws.root, check=True)
    assert "removed: 3.0 MiB" in done.stdout
    assert not made["orphan"].exists() and not Path(made["failed"].path).exists()
    assert {r.id for r in registry.list()} == {made[k].id for k in ("kept", "made_from_gone", "finished", "running")} | {
        r.id for r in registry.list("model", name="child") + registry.list("dataset", name="fb")}
    assert (ws.root / "datasets" / "feedback-exports").exists()
    assert made["fresh"].exists() and Path(made["kept"].path).exists()
    again = cli_here("gc", "--yes", workspace=ws.root, check=True)
    assert "nothing to remove" in again.stdout


def test_gc_refuses_a_registry_that_is_not_this_workspaces(workspace, cli_here, monkeypatch, tmp_path):
    # a stale $LLMKIT_DB_URL or a typo: an empty registry names none of the folders, and gc removed them all
    ws, _, made = workspace
    missing = tmp_path / "typo.db"
    monkeypatch.setenv("LLMKIT_DB_URL", f"sqlite:///{missing}")
    out = cli_here("gc", "--yes", workspace=ws.root)
    assert out.returncode == 2 and f"no registry at {missing}" in out.stderr and not missing.exists()
    other = tmp_path / "other.db"
    Registry(f"sqlite:///{other}").close()  # a registry, but another workspace's (empty here)
    monkeypatch.setenv("LLMKIT_DB_URL", f"sqlite:///{other}")
    moved = tmp_path / "registry.db.moved"  # a workspace without its own registry.db to fall back on
    (ws.root / "registry.db").rename(moved)
    out = cli_here("gc", "--yes", workspace=ws.root)
    assert out.returncode == 2 and "names none of the" in out.stderr and "nothing was removed" in out.stderr
    assert made["orphan"].exists() and Path(made["kept"].path).exists()
    moved.rename(ws.root / "registry.db")  # with it, what it names stays whatever registry gc was given
    assert cli_here("gc", "--yes", workspace=ws.root).returncode == 0
    assert not made["orphan"].exists() and Path(made["kept"].path).exists()


def test_gc_keeps_a_failed_run_that_can_resume(workspace):
    ws, registry, made = workspace
    (Path(made["failed"].path) / "checkpoints" / "step-000010").mkdir(parents=True)
    garbage = find_garbage(registry, ws.root, KINDS, failed_runs=True)
    assert garbage.runs == [] and any(f"--resume {made['failed'].id}" in line for line in garbage.kept)


def test_rm_refuses_a_running_run_and_keeps_an_adapters_base_folder(workspace, cli_here):
    # rm took a training run's folder from under it; rm --force of an adapter's base took the weights it loads
    ws, registry, made = workspace
    out = cli_here("rm", made["running"].id, "--yes", workspace=ws.root)
    assert out.returncode == 2 and "is running (process" in out.stderr and Path(made["running"].path).exists()
    assert cli_here("rm", made["running"].id, "--yes", "--force", workspace=ws.root).returncode == 0
    base = registry.add("model", "base", path=_folder(ws, "models", "base-11"))
    registry.add("model", "lora", path=_folder(ws, "models", "lora-12"), parents=[(base.id, "base_model")])
    out = cli_here("rm", base.id, "--yes", "--force", workspace=ws.root, check=True)
    assert Path(base.path).exists() and "kept its folder, which lora:v1 also use" in " ".join(out.stdout.split())


def test_gc_pointed_at_another_workspaces_registry_keeps_what_this_ones_names(workspace, cli_here, monkeypatch,
                                                                              tmp_path):
    # another workspace's registry that named one folder of this one (a dataset of the same file: same folder name)
    ws, registry, made = workspace
    other = Registry(f"sqlite:///{tmp_path / 'other.db'}")
    other.add("dataset", "ds", params={"inputs": [str(ws.root / "datasets" / "ds-5")]})
    other.close()
    monkeypatch.setenv("LLMKIT_DB_URL", f"sqlite:///{tmp_path / 'other.db'}")
    listed = json.loads(cli_here("gc", "--dry-run", "--json", workspace=ws.root, check=True).stdout)
    assert listed["folders"] == [str(made["orphan"])]  # this workspace's registry.db still names the rest
    for i in range(5):  # most folders unnamed: refused, even with a yes
        _aged(_folder(ws, "models", f"stray-{i}"))
    monkeypatch.delenv("LLMKIT_DB_URL")
    out = cli_here("gc", "--yes", workspace=ws.root)
    assert out.returncode == 0  # 6 unused of 17: a crash's leftovers, removed
    for i in range(12):
        _aged(_folder(ws, "runs", f"stray-run-{i}"))
    out = cli_here("gc", "--yes", workspace=ws.root)
    assert out.returncode == 2 and "look unused by the registry" in out.stderr
    assert cli_here("gc", "--yes", "--force", workspace=ws.root).returncode == 0


def test_a_folder_whose_files_changed_within_the_hour_is_kept_whatever_its_own_time(workspace):
    # an export writing into a folder it made long ago touches its files, not the folder's own time
    ws, registry, made = workspace
    os.utime(made["orphan"] / "weights.bin")  # now
    garbage = find_garbage(registry, ws.root, KINDS)
    assert garbage.folders == [] and any("orphan-2" in line and "changed in the last hour" in line for line in garbage.kept)


def test_a_workspace_inside_a_folder_named_like_a_kind_keeps_its_folders(tmp_path: Path):
    # a record's folder is the LAST <kind>/<name> of its path: /data/models/ws/models/m-1 names models/m-1, not models/ws
    ws = Workspace.open(tmp_path / "models" / "ws")
    registry = Registry.for_workspace(ws.root)
    kept = registry.add("model", "kept", path=_aged(_folder(ws, "models", "kept-1")))
    orphan = _aged(_folder(ws, "models", "orphan-2"))
    garbage = find_garbage(registry, ws.root, KINDS)
    assert garbage.folders == [orphan] and Path(kept.path).exists()


def test_failed_runs_go_when_died_too_but_not_a_study_one_a_model_came_from_or_one_elsewhere(workspace, tmp_path):
    ws, registry, made = workspace
    died = registry.add("run", "died", path=_aged(_folder(ws, "runs", "died-11")), metrics={**running_mark(), "pid": 999999})
    study = registry.add("run", "study", kind="study", path=_aged(_folder(ws, "runs", "study-12")),
                         metrics=ended_mark("failed", "boom"))
    parent = registry.add("run", "parent", path=_aged(_folder(ws, "runs", "parent-13")), metrics=ended_mark("failed", "x"))
    registry.add("model", "from-parent", path=_aged(_folder(ws, "models", "from-parent-14")),
                 parents=[(parent.id, "produced_by")])
    elsewhere = tmp_path / "other-ws" / "models" / "theirs-15"  # another workspace's (its folder not reachable here)
    elsewhere.mkdir(parents=True)
    theirs = registry.add("model", "theirs", path=elsewhere)
    __import__("shutil").rmtree(elsewhere)
    garbage = find_garbage(registry, ws.root, KINDS, failed_runs=True)
    assert {r.id for r in garbage.runs} == {made["failed"].id, died.id}  # not study, not parent
    assert theirs.id not in {r.id for r in garbage.records} and study.id not in {r.id for r in garbage.runs}


def test_gc_keeps_the_record_an_alias_points_at(workspace, cli_here):
    from llmkit.models.aliases import move_alias

    ws, registry, made = workspace
    move_alias(registry, "prod", made["gone"].id)
    listed = json.loads(cli_here("gc", "--dry-run", "--json", workspace=ws.root, check=True).stdout)
    assert listed["records"] == [] and any("an alias points at it" in line for line in listed["kept"])


def test_gc_removes_a_symlink_in_the_workspace_and_not_what_it_points_at(workspace, cli_here, tmp_path):
    ws, _, made = workspace
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious.bin").write_bytes(b"x")
    link = ws.root / "models" / "linked-20"
    link.symlink_to(target, target_is_directory=True)
    old = time.time() - GRACE_S - 60
    os.utime(link, (old, old), follow_symlinks=False)
    done = cli_here("gc", "--yes", "--json", workspace=ws.root, check=True)
    assert str(link) in json.loads(done.stdout)["folders"]
    assert not link.is_symlink() and (target / "precious.bin").exists()


def test_gc_dry_run_lists_what_a_real_run_would_refuse(workspace, cli_here):
    # the refusal's own advice is "llmkit gc --dry-run lists them"
    ws, _, made = workspace
    strays = [_aged(_folder(ws, "runs", f"stray-run-{i}")) for i in range(12)]
    assert cli_here("gc", "--yes", workspace=ws.root).returncode == 2
    listed = json.loads(cli_here("gc", "--dry-run", "--json", workspace=ws.root, check=True).stdout)
    assert set(listed["folders"]) == {str(p) for p in [made["orphan"], *strays]} and listed["removed"] is False
