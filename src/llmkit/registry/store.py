"""The registry: datasets, runs, models, evaluations and feedback, with lineage between them.

SQLAlchemy Core over SQLite (a file in the workspace, WAL mode) by default, or any SQLAlchemy URL
(PostgreSQL for a team). Artifacts stay plain folders; a row points at one only after the folder
was renamed into place. Opening a database brings its schema up to date (registry.schema).
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from llmkit.errors import UserError
from llmkit.registry.connection import back_off, make_engine, safe_url, transient, unreachable_hint
from llmkit.registry.names import NAMED_BY_USER, RECORD_TYPES, check_name
from llmkit.registry.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    feedback,
    lineage,
    records,
    schema_table,
)


@dataclass
class Record:
    id: str
    type: str
    name: str
    version: int
    kind: str
    created_at: float
    path: str | None
    content_hash: str | None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}"

    @property
    def created(self) -> str:
        return datetime.fromtimestamp(self.created_at, UTC).isoformat(timespec="seconds")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ref": self.ref, "created": self.created}


def _row_to_record(row: Any, root: Path | None = None) -> Record:
    m = row._mapping
    return Record(
        id=m["id"], type=m["type"], name=m["name"], version=m["version"], kind=m["kind"],
        created_at=m["created_at"], path=located(m["path"], root), content_hash=m["content_hash"],
        params=json.loads(m["params"] or "{}"), metrics=json.loads(m["metrics"] or "{}"),
    )


def located(path: str | None, root: Path | None) -> str | None:
    """Where a record's folder is for the workspace at `root`: a workspace moved or copied since (a backup restored,
    a new disk) holds it at <root>/<kind>/<name>, and that copy is the one to read, not the registered path, which
    is gone or, for a copy, the original's. A folder of another workspace sharing the registry stays where it is."""
    if path is None or root is None:
        return path
    registered = Path(path)
    if registered.parent.parent == root:
        return path
    here = root / registered.parent.name / registered.name
    return str(here) if here.exists() else path


class RegistryUnavailable(UserError):
    """The registry's database refused: down, read-only, or this role may not write. A server answers 503."""


class Registry:
    def __init__(self, url: str, root: Path | None = None):
        self.url = url
        self.root = root  # the workspace whose folders the records' paths are read against (`located`)
        self.is_sqlite = url.startswith("sqlite")
        self.engine = make_engine(url)
        self._migrate()

    @classmethod
    def for_workspace(cls, root: Path | str, db_url: str | None = None) -> Registry:
        url = db_url or os.environ.get("LLMKIT_DB_URL") or f"sqlite:///{Path(root) / 'registry.db'}"
        return cls(url, Path(root).resolve())

    def missing(self, rec: Record) -> str:
        """What to say when a record's folder is not here: another workspace's (machines sharing this registry
        each keep their own folders), or gone."""
        if self.root is not None and rec.path and self.root not in Path(rec.path).parents:
            return (f"{rec.type} {rec.ref}'s files are at {rec.path}, outside this workspace ({self.root}): another "
                    "machine's or workspace's sharing this registry; run this there, or copy that folder into "
                    f"{self.root / Path(rec.path).parent.name}")
        return f"{rec.type} {rec.ref} points at {rec.path}, which is missing; remove it with 'llmkit rm {rec.id}'"

    # -- schema -----------------------------------------------------------------------------
    def _migrate(self) -> None:
        def step(conn: sa.Connection) -> None:
            if conn.dialect.name == "postgresql":
                # Serialize first opens: two processes must not both CREATE TABLE (DuplicateTable).
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7236514)"))
            schema_table.create(conn, checkfirst=True)
            current = conn.execute(sa.select(schema_table.c.version)).scalar()
            if current is None:
                conn.execute(schema_table.insert().values(version=0))
                current = 0
            if current > SCHEMA_VERSION:
                raise UserError(f"the registry at {safe_url(self.url)} has schema v{current}, newer than this llmkit (v{SCHEMA_VERSION}); upgrade llmkit")
            for version in range(current + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version - 1](conn)
                conn.execute(schema_table.update().values(version=version))

        try:
            before = self._current_schema()
            if before == SCHEMA_VERSION:  # the usual case: read, nothing to write (a read-only role works)
                return
            self._write(step)
        except RegistryUnavailable:
            raise
        except OperationalError as err:
            # psycopg's message spans lines ("Is the server running...?"): the user gets one line.
            text = " ".join(str(err.orig).split())
            hint = "" if self.is_sqlite else f"; {unreachable_hint(text)}"
            raise UserError(f"cannot open the registry at {safe_url(self.url)}: {text}{hint}") from None
        if before and not self.is_sqlite:  # a team's database: everyone's older llmkit stops working on it now
            print(f"migrated the registry at {safe_url(self.url)} from schema v{before} to v{SCHEMA_VERSION}: llmkit "
                  "older than this one cannot open it any more", file=sys.stderr)

    def _current_schema(self) -> int | None:
        """The schema version, read without writing; None when the registry has no schema table yet.

        Retried like a write: on a SQLite file another process is creating, the first connection's switch to WAL
        can meet "database is locked" without waiting out busy_timeout (1 in ~60 two-process first opens here)."""
        def read() -> int | None:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(schema_table.name):
                    return None
                return conn.execute(sa.select(schema_table.c.version)).scalar()

        return self._retrying(read)

    def _refused(self, err: DBAPIError) -> RegistryUnavailable | None:
        """One line for a database that refuses this process (permissions, a read-only disk); None for other errors."""
        text = " ".join(str(getattr(err, "orig", err)).split())
        where = safe_url(self.url)
        if self.is_sqlite and ("unable to open database file" in text or "readonly database" in text):
            folder = Path(sa.engine.make_url(self.url).database or ".").resolve().parent
            if not folder.is_dir():
                return RegistryUnavailable(f"cannot open the registry {where}: its folder {folder} does not exist; "
                                           "check the path, or pass --db-url")
            return RegistryUnavailable(f"cannot write the registry {where}: its folder {folder} is read-only or not "
                                       f"writable by this user (uid {os.getuid()}); make it writable, or pass --db-url "
                                       "a registry you can write")
        if self.is_sqlite and "database disk image is malformed" in text:  # damaged, not foreign: most rows survive
            file = Path(sa.engine.make_url(self.url).database or ".").resolve()
            return RegistryUnavailable(f"the registry {file} is damaged ({text[:80]}): restore it from a backup, or "
                                       f"recover its rows with: sqlite3 {file} .recover | sqlite3 {file}.recovered "
                                       f"&& mv {file} {file}.bad && mv {file}.recovered {file}")
        if self.is_sqlite and "file is not a database" in text:
            file = Path(sa.engine.make_url(self.url).database or ".").resolve()
            return RegistryUnavailable(f"the registry {file} is not a SQLite database llmkit can read ({text[:80]}): "
                                       f"move it aside (mv {file} {file}.bad) and llmkit starts an empty one, restore "
                                       "it from a backup, or point --workspace at another workspace")
        if not self.is_sqlite and isinstance(err, OperationalError):  # down, unreachable, or closed mid-command
            return RegistryUnavailable(f"cannot open the registry at {where} ({text[:200]}): {unreachable_hint(text)}, "
                                       "then run the command again")
        if "permission denied" in text or "read-only" in text:
            return RegistryUnavailable(f"the registry at {where} refused this role ({text[:160]}): llmkit records what "
                                       "it does and needs SELECT, INSERT, UPDATE and DELETE on its tables (and CREATE "
                                       "once, to migrate); use a role with write access")
        return None

    def schema_version(self) -> int:
        return self._read(lambda conn: conn.execute(sa.select(schema_table.c.version)).scalar_one())

    # -- reads and writes ---------------------------------------------------------------------
    def _read(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """fn(conn) on a read connection, retried while another process holds a lock; a database that is down,
        corrupt or refusing is one line (`_refused`), not a driver's traceback, whichever read meets it first."""
        def run() -> Any:
            with self.engine.connect() as conn:
                return fn(conn)

        return self._retrying(run)

    def _write(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """Run fn in one transaction, retrying when another process holds the lock or won a race."""
        def run() -> Any:
            with self.engine.execution_options(llmkit_write=True).begin() as conn:
                return fn(conn)

        return self._retrying(run, races=True)

    def _retrying(self, run: Callable[[], Any], races: bool = False, attempts: int = 20) -> Any:
        """run(), again after a back-off while another process holds the lock (or, with `races`, won an insert race);
        a database that refuses this process is one line (`_refused`)."""
        for attempt in range(attempts):
            try:
                return run()
            except DBAPIError as err:  # psycopg's InsufficientPrivilege is a ProgrammingError
                retry = (races and isinstance(err, IntegrityError)) or (isinstance(err, OperationalError) and transient(err))
                if not retry or attempt == attempts - 1:
                    if (refused := self._refused(err)) is not None:
                        raise refused from None
                    raise
                back_off(attempt)
        raise AssertionError("unreachable")

    def write(self, fn: Callable[[sa.Connection], Any]) -> Any:
        """fn(conn) in one write transaction, retried like the registry's own writes (models.aliases uses it)."""
        return self._write(fn)

    def add(
        self,
        type: str,
        name: str,
        *,
        kind: str = "",
        path: str | Path | None = None,
        content_hash: str | None = None,
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        parents: list[tuple[str, str]] | None = None,
    ) -> Record:
        """Register an artifact as the next version of `name`; parents are (record id, relation)."""
        if type not in RECORD_TYPES:
            raise ValueError(f"record type {type!r} not in {RECORD_TYPES}")
        if type in NAMED_BY_USER:
            check_name(name, type)  # callers check earlier, before writing; this is the last line of defence
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"refusing to register {path}: it does not exist")

        def insert(conn: sa.Connection) -> Record:
            latest = conn.execute(
                sa.select(sa.func.max(records.c.version)).where(records.c.type == type, records.c.name == name)
            ).scalar()
            rec = Record(
                id=uuid.uuid4().hex[:12], type=type, name=name, version=(latest or 0) + 1, kind=kind,
                created_at=time.time(), path=str(path) if path is not None else None,
                content_hash=content_hash, params=params or {}, metrics=metrics or {},
            )
            conn.execute(records.insert().values(**{**asdict(rec), "params": json.dumps(rec.params), "metrics": json.dumps(rec.metrics)}))
            for parent_id, relation in parents or []:
                conn.execute(lineage.insert().values(child_id=rec.id, parent_id=parent_id, relation=relation))
            return rec

        return self._write(insert)

    def link(self, child_id: str, parent_id: str, relation: str) -> None:
        """Add a lineage edge after registration (no-op when it exists)."""

        def insert(conn: sa.Connection) -> None:
            edge = (lineage.c.child_id == child_id) & (lineage.c.parent_id == parent_id) & (lineage.c.relation == relation)
            if conn.execute(sa.select(lineage.c.child_id).where(edge)).first() is None:
                conn.execute(lineage.insert().values(child_id=child_id, parent_id=parent_id, relation=relation))

        self._write(insert)

    def update_metrics(self, record_id: str, metrics: dict[str, Any]) -> None:
        def update(conn: sa.Connection) -> None:
            row = conn.execute(sa.select(records.c.metrics).where(records.c.id == record_id)).scalar_one()
            merged = {**json.loads(row or "{}"), **metrics}
            conn.execute(records.update().where(records.c.id == record_id).values(metrics=json.dumps(merged)))

        self._write(update)

    def remove(self, record_id: str) -> None:
        def delete(conn: sa.Connection) -> None:
            conn.execute(lineage.delete().where(sa.or_(lineage.c.child_id == record_id, lineage.c.parent_id == record_id)))
            conn.execute(records.delete().where(records.c.id == record_id))

        self._write(delete)

    def add_feedback(self, model: str, *, response_id: str | None = None, rating: int | None = None,
                     prompt: str | None = None, response: str | None = None, correction: str | None = None,
                     extra: dict[str, Any] | None = None) -> str:
        fid = uuid.uuid4().hex[:12]
        values = dict(id=fid, created_at=time.time(), model=model, response_id=response_id, rating=rating,
                      prompt=prompt, response=response, correction=correction, extra=json.dumps(extra or {}))
        self._write(lambda conn: conn.execute(feedback.insert().values(**values)))
        return fid

    # -- reads ------------------------------------------------------------------------------
    def list(self, type: str | None = None, name: str | None = None) -> list[Record]:
        query = sa.select(records).order_by(records.c.created_at, records.c.version)
        if type:
            query = query.where(records.c.type == type)
        if name:
            query = query.where(records.c.name == name)
        return self._read(lambda conn: [_row_to_record(r, self.root) for r in conn.execute(query)])

    def find(self, ref: str, type: str | None = None) -> Record | None:
        """A record by id, unique id prefix, `name` (latest version), `name:vN` or `name@N`."""
        name, version = ref, None
        for sep in (":v", "@"):
            head, _, tail = ref.rpartition(sep)
            if head and tail.isdigit():
                name, version = head, int(tail)
                break
        return self._read(lambda conn: self._find(conn, ref, name, version, type))

    def _find(self, conn: sa.Connection, ref: str, name: str, version: int | None, type: str | None) -> Record | None:
        query = sa.select(records).where(records.c.name == name)
        if type:
            query = query.where(records.c.type == type)
        if version is not None:
            query = query.where(records.c.version == version)
        rows = conn.execute(query.order_by(records.c.version.desc())).fetchall()
        if rows:
            types = {r._mapping["type"] for r in rows}
            if len(types) > 1 and type is None:
                # The same name as a dataset and a model: prefer the model, which people address most.
                for preferred in ("model", "dataset", "run", "eval"):
                    if preferred in types:
                        rows = [r for r in rows if r._mapping["type"] == preferred]
                        break
            return _row_to_record(rows[0], self.root)
        if len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref):
            query = sa.select(records).where(records.c.id.like(ref + "%"))
            if type:
                query = query.where(records.c.type == type)
            rows = conn.execute(query).fetchall()
            if len(rows) == 1:
                return _row_to_record(rows[0], self.root)
        return None

    def get(self, ref: str, type: str | None = None) -> Record:
        rec = self.find(ref, type)
        if rec is None:
            what = type or "record"
            names = sorted({r.name for r in self.list(type)})
            close = difflib.get_close_matches(ref.split(":")[0], names, n=1)
            more = f", ... ({len(names)} in all: llmkit ls{f' {what}s' if type else ''})" if len(names) > 10 else ""
            hint = (f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(names[:10])}{more}") if names \
                else f"; there are no {what}s yet"
            raise UserError(f"no {what} named '{ref}' in the registry{hint}")
        return rec

    def sharing_files(self, record: Record) -> list[Record]:
        """Other records whose folder is the record's folder, inside it, or holds it: removing one of
        these folders would take the others' files (workspaces made before each version had its own)."""
        if not record.path:
            return []
        mine = Path(record.path).resolve()
        others = []
        for other in self.list():
            if other.id == record.id or not other.path:
                continue
            theirs = Path(other.path).resolve()
            if theirs == mine or mine in theirs.parents or theirs in mine.parents:
                others.append(other)
        return others

    def find_by_hash(self, type: str, content_hash: str, name: str | None = None) -> Record | None:
        query = sa.select(records).where(records.c.type == type, records.c.content_hash == content_hash)
        if name:
            query = query.where(records.c.name == name)
        row = self._read(lambda conn: conn.execute(query.order_by(records.c.version.desc())).first())
        return _row_to_record(row, self.root) if row else None

    def parents(self, record_id: str) -> list[tuple[str, Record]]:
        return self._linked(record_id, lineage.c.child_id, lineage.c.parent_id)

    def children(self, record_id: str) -> list[tuple[str, Record]]:
        return self._linked(record_id, lineage.c.parent_id, lineage.c.child_id)

    def _linked(self, record_id: str, this_col, other_col) -> list[tuple[str, Record]]:
        query = sa.select(lineage.c.relation, records).join(records, records.c.id == other_col).where(this_col == record_id)
        return self._read(lambda conn: [(row._mapping["relation"], _row_to_record(row, self.root))
                                        for row in conn.execute(query)])

    def list_feedback(self, model: str | None = None, response_id: str | None = None) -> list[dict[str, Any]]:
        """Feedback and request-log rows, oldest first; of one model and/or one response when given (the server looks
        a response up by its id: reading the whole table for it cost every unknown id a full read and decode)."""
        query = sa.select(feedback).order_by(feedback.c.created_at)
        if model:
            query = query.where(feedback.c.model == model)
        if response_id is not None:
            query = query.where(feedback.c.response_id == response_id)
        return self._read(lambda conn: [{**row._mapping, "extra": json.loads(row._mapping["extra"])}
                                        for row in conn.execute(query)])

    def remove_feedback(self, *, model: str | None = None, before: float | None = None,
                        response_ids: list[str] | None = None, count_only: bool = False) -> int:
        """Delete (or count) the feedback and request-log rows matching every filter given; at least one is."""
        where = [c for c in (feedback.c.model == model if model else None,
                             feedback.c.created_at < before if before is not None else None,
                             feedback.c.response_id.in_(response_ids) if response_ids else None) if c is not None]
        if not where:
            raise ValueError("remove_feedback needs a filter")
        if count_only:
            return self._read(lambda conn: conn.execute(sa.select(sa.func.count()).select_from(feedback).where(*where)).scalar_one())
        return self._write(lambda conn: conn.execute(feedback.delete().where(*where)).rowcount)

    def close(self) -> None:
        self.engine.dispose()
