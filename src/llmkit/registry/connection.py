"""How llmkit connects to a registry database: one SQLAlchemy engine per URL, SQLite in WAL mode with writers
that wait for the lock, and which errors are another process's lock (retried) rather than a fault."""

from __future__ import annotations

import random
import time

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from llmkit.errors import UserError


def make_engine(url: str) -> sa.Engine:
    try:
        if url.startswith("sqlite"):
            # isolation_level=None hands transaction control to us, so writes can take the
            # write lock up front (BEGIN IMMEDIATE) instead of failing on a read->write upgrade.
            engine = sa.create_engine(url, connect_args={"timeout": 30, "isolation_level": None})
            sa.event.listen(engine, "connect", _sqlite_on_connect)
            sa.event.listen(engine, "begin", _sqlite_begin)
            return engine
        # a server that is down or unreachable is said within seconds, not after the OS's TCP timeout
        return sa.create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10}
                                if url.startswith("postgresql") else {})
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ModuleNotFoundError) as err:
        raise UserError(f"registry URL '{safe_url(url)}' is not usable ({err}); use sqlite:///PATH or "
                        "postgresql+psycopg://USER@HOST/DB") from None


def transient(err: OperationalError) -> bool:
    """Another process holds the lock, or a serializable transaction lost a race: worth a retry."""
    return "locked" in str(err) or "busy" in str(err) or "could not serialize" in str(err)


def back_off(attempt: int) -> None:
    time.sleep(min(0.05 * (2**attempt), 1.0) * random.uniform(0.5, 1.5))


def _sqlite_on_connect(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets a server read while a training run writes; busy_timeout makes writers wait, not fail.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # Only writes (see _write) take the write lock up front; a read gets a plain deferred BEGIN, so
    # under WAL it reads a snapshot instead of waiting behind (and timing out on) a writer.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("llmkit_write") else "BEGIN")


def safe_url(url: str) -> str:
    """The URL with its password hidden."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"
