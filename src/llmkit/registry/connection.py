"""How llmkit connects to a registry database: one SQLAlchemy engine per URL, SQLite in WAL mode with writers
that wait for the lock, and which errors are another process's lock (retried) rather than a fault."""

from __future__ import annotations

import random
import re
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
    except ValueError as err:  # a port that is not a number ('...:5543x/db'): SQLAlchemy leaves it to int()
        raise UserError(f"registry URL '{safe_url(url)}' is not usable ({err}): its port must be a number; use "
                        "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB") from None
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ModuleNotFoundError) as err:
        raise UserError(f"registry URL '{safe_url(url)}' is not usable ({err}); use sqlite:///PATH or "
                        "postgresql+psycopg://USER@HOST/DB") from None


def unreachable_hint(text: str) -> str:
    """How to fix a database server that refused to open a connection, from the driver's message."""
    lower = text.lower()
    if "password authentication failed" in lower or "no password supplied" in lower:
        return "check the user and password in --db-url (or $LLMKIT_DB_URL, or workspace.db_url in the config file)"
    if 'fatal: role "' in lower and "does not exist" in lower:
        return "create that role on the server or fix the user in --db-url"
    if 'fatal: database "' in lower and "does not exist" in lower:
        return "create that database (createdb NAME, or CREATE DATABASE) or fix its name in --db-url"
    if "resolve host" in lower or "name or service not known" in lower or "nodename nor servname" in lower:
        return "fix the host name in --db-url (or $LLMKIT_DB_URL)"
    return "start the database server, or fix the host and port in --db-url (or $LLMKIT_DB_URL)"


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
    except Exception:  # not a URL SQLAlchemy parses (a port that is not a number): shown as typed, password hidden
        return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)
