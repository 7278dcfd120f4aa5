"""What `llmkit gc` removes from a workspace: folders no record points at, records whose folder here is gone, and
(when asked) runs that failed or died with nothing made from them and no checkpoint to resume from.

Folders lose their record when a command is killed between writing and registering, after `rm --keep-files`,
or when a machine sharing the registry removed the record (`rm` deletes only folders in its own workspace). A
folder is another record's when any record's path, wherever it was registered, names it (`<kind>/<name>`): paths
of a moved workspace, or of machines sharing the registry, still match by name. A folder changed in the last
`GRACE_S` is left, whatever it holds: a command may be writing it (an export measures its table before it
registers). Records whose folders are gone are only removed from a workspace's own SQLite registry: in a shared
one, "missing here" may be another machine's workspace at the same path.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from llmkit.registry.run_state import DIED, FAILED, run_state
from llmkit.registry.schema import lineage
from llmkit.registry.store import Record, Registry

GRACE_S = 3600  # a folder changed within the last hour may be being written


@dataclass
class Garbage:
    folders: list[Path] = field(default_factory=list)     # in the workspace, no record names them
    records: list[Record] = field(default_factory=list)   # their folder in this workspace is gone
    runs: list[Record] = field(default_factory=list)      # failed or died, nothing made from them (with their folders)
    kept: list[str] = field(default_factory=list)         # what looked like garbage and stays, and why
    sizes: dict[str, int] = field(default_factory=dict)   # path -> bytes on disk
    not_this_workspace: bool = False  # no record names any folder of the workspace: another workspace's registry
    folders_seen: int = 0             # the workspace's folders, named or not

    @property
    def bytes(self) -> int:
        return sum(self.sizes.values())

    def __bool__(self) -> bool:
        return bool(self.folders or self.records or self.runs)


def find_garbage(registry: Registry, root: Path, kinds: Iterable[str], *, failed_runs: bool = False,
                 protected: set[str] = frozenset(), now: float | None = None) -> Garbage:
    """What gc would remove in the workspace at `root` (its artifact folders `kinds`); `protected` record ids
    (a model an alias points at) are never removed. A folder the workspace's own registry.db names is in use too,
    whatever registry gc was pointed at (a stale $LLMKIT_DB_URL naming another workspace's)."""
    now = time.time() if now is None else now
    kinds = tuple(kinds)
    records = registry.list()
    own_file = root / "registry.db"
    others = []
    if own_file.exists() and not (registry.is_sqlite and registry.url.endswith(str(own_file))):
        own = Registry(f"sqlite:///{own_file}", root)
        try:
            others = own.list()
        finally:
            own.close()
    # a record's own folder, and any workspace folder its params name (feedback datasets are prepared from files in
    # datasets/feedback-exports, which their records cite by file and line)
    named = {_kind_and_name(Path(text), kinds) for r in [*records, *others] for text in (r.path, *_strings(r.params))
             if text}
    out = Garbage()
    present = {(kind, entry.name) for kind in kinds if (root / kind).is_dir() for entry in (root / kind).iterdir()
               if not entry.name.startswith(".")}
    out.not_this_workspace = bool(present) and not (present & named)
    out.folders_seen = len(present)
    for kind in kinds:
        folder = root / kind
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if entry.name.startswith(".") or (kind, entry.name) in named:
                continue  # temporary folders are the workspace's own to clean (Workspace.clean_stale_tmp)
            if now - _last_change(entry) < GRACE_S:
                out.kept.append(f"{entry} (no record, but changed in the last hour: a command may be writing it)")
                continue
            out.folders.append(entry)
            out.sizes[str(entry)] = _size(entry)
    own = registry.is_sqlite and registry.url.endswith(str(root / "registry.db"))
    with registry.engine.connect() as conn:  # one query, not one per record
        with_children = set(conn.execute(sa.select(lineage.c.parent_id).distinct()).scalars())
    for rec in records:
        here = rec.path is not None and root in Path(rec.path).parents
        if here and not Path(rec.path).exists():
            why = ("things were made from it" if rec.id in with_children else "an alias points at it"
                   if rec.id in protected else "" if own else "the registry is shared: it may be another machine's")
            if why:
                out.kept.append(f"{rec.type} {rec.ref} ({rec.id}): its folder {rec.path} is gone, but {why}")
            else:
                out.records.append(rec)
        elif failed_runs and here and rec.type == "run" and run_state(rec.metrics) in (FAILED, DIED) \
                and rec.id not in with_children and rec.kind != "study":
            if any((Path(rec.path) / "checkpoints").glob("step-*")):  # it resumes: its trained steps are not garbage
                out.kept.append(f"run {rec.ref} ({rec.id}, {run_state(rec.metrics)}) has checkpoints: --resume {rec.id} "
                                f"continues it; llmkit rm {rec.id} removes it")
                continue
            out.runs.append(rec)
            out.sizes[rec.path] = _size(Path(rec.path))
    return out


def remove_garbage(registry: Registry, garbage: Garbage) -> None:
    for rec in [*garbage.records, *garbage.runs]:
        registry.remove(rec.id)
    for path in [*garbage.folders, *(Path(r.path) for r in garbage.runs if r.path)]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value] if "/" in value or "\\" in value else []
    if isinstance(value, dict):
        value = list(value.values())
    return [s for item in value for s in _strings(item)] if isinstance(value, list | tuple) else []


def _kind_and_name(path: Path, kinds: tuple[str, ...]) -> tuple[str, str] | None:
    parts = path.parts
    for i in range(len(parts) - 2, -1, -1):  # the last <kind>/<name> in the path: the workspace's own folders
        if parts[i] in kinds:
            return parts[i], parts[i + 1]
    return None


def _last_change(path: Path) -> float:
    latest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in (*dirnames, *filenames):
                try:
                    latest = max(latest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                except OSError:  # gone while we looked
                    pass
    return latest


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size if path.exists() or path.is_symlink() else 0
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
