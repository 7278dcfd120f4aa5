"""Session artifacts of the tiny-model workspace made once for all pytest-xdist workers.

Each worker has its own workspace (`lm_workspace`), and each used to train its own 'sms-clf' (~50 s) and
'serve-lm' (~20 s). Now the first worker to need an artifact builds it in its workspace, under a lock in the
directory the workers share, and leaves a copy there: the registry rows it added (records and lineage) and the
files it wrote. A worker that needs it later waits for the lock and copies it in: the same files and the same
rows (ids included) with the builder's workspace path replaced by its own, so both workspaces say the same thing.
When a build fails, nothing is left and the next worker builds for itself; without xdist nothing is shared.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
TABLES = ("records", "lineage")  # what building a dataset or a model adds to the registry
# Files whose text may hold the workspace's path (manifests, lineage, run configs, reports, records); weights,
# shards and checkpoints are copied as they are.
TEXT_SUFFIXES = {".json", ".jsonl", ".yaml", ".yml", ".html", ".txt", ".md", ".csv", ".tsv"}
REGISTRY_FILES = {"registry.db", "registry.db-wal", "registry.db-shm"}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel too if this worker dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _rows(db: Path) -> dict[str, list[dict]]:
    with closing(sqlite3.connect(db, timeout=60)) as conn:
        conn.row_factory = sqlite3.Row
        return {table: [dict(row) for row in conn.execute(f"SELECT * FROM {table}")] for table in TABLES}


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).as_posix() not in REGISTRY_FILES}


def _key(table: str, row: dict) -> str:
    # A record is its id (a build may update one it did not add); a lineage row is all of its columns.
    return row["id"] if table == "records" else json.dumps(row, sort_keys=True)


def made_once(shared: Path | None, workspace: Path, name: str, build: Callable[[], T], load: Callable[[], T]) -> T:
    """`build()` in `workspace`, or the copy another worker left of what its `build()` added; then `load()`'s
    value (what `build()` returns, read back from the registry) when copied."""
    if shared is None:
        return build()
    store = shared / "lm-workspace-artifacts" / name
    store.parent.mkdir(parents=True, exist_ok=True)
    with _locked(store.parent / f"{name}.lock"):
        if (store / "rows.json").exists():
            _copy_in(store, workspace)
            return load()
        db = workspace / "registry.db"
        rows_before = {table: {_key(table, r) for r in rows} for table, rows in _rows(db).items()}
        files_before = _files(workspace)
        value = build()
        added = {table: [r for r in rows if _key(table, r) not in rows_before[table]] for table, rows in _rows(db).items()}
        shutil.rmtree(store, ignore_errors=True)
        for rel in sorted(_files(workspace) - files_before):
            (store / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(workspace / rel, store / "files" / rel)
        # Written last: its presence says the copy is whole.
        (store / "rows.json").write_text(json.dumps({"root": str(workspace), "rows": added}))
        return value


def _copy_in(store: Path, workspace: Path) -> None:
    saved = json.loads((store / "rows.json").read_text())
    old, new = saved["root"], str(workspace)
    files = store / "files"
    for src in files.rglob("*"):
        if not src.is_file():
            continue
        dst = workspace / src.relative_to(files)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix in TEXT_SUFFIXES:
            dst.write_bytes(src.read_bytes().replace(old.encode(), new.encode()))
            shutil.copystat(src, dst)
        else:
            shutil.copy2(src, dst)
    with closing(sqlite3.connect(workspace / "registry.db", timeout=60)) as conn, conn:
        for table, rows in saved["rows"].items():
            for row in rows:
                row = {k: v.replace(old, new) if isinstance(v, str) else v for k, v in row.items()}
                columns = ", ".join(row)
                conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
