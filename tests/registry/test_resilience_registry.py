"""A registry that breaks under a command — a damaged SQLite file, a PostgreSQL database gone mid-command, a URL
typed wrong, a wrong password — is one line saying what and how to fix it, never a driver's traceback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from llmkit.errors import UserError
from llmkit.registry import Registry, RegistryUnavailable
from llmkit.registry.schema import registry_state


def _drop(url: str) -> None:
    """Drop the database `url` names, ending the sessions on it: what a server going away looks like to a client."""
    import psycopg
    from psycopg import sql

    target = sa.engine.make_url(url)
    admin = target.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(target.database)))


def _damage(db: Path) -> None:
    """Overwrite every page after the first two (the schema's and llmkit_schema's) with junk, as a bad disk would."""
    size = db.stat().st_size
    with open(db, "r+b") as fh:
        fh.seek(8192)
        fh.write(b"JUNK" * ((size - 8192) // 4))


def test_a_damaged_sqlite_registry_is_one_line_on_every_read(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    reg = Registry(f"sqlite:///{db}")
    for i in range(40):
        reg.add("dataset", f"d{i}", params={"pad": "x" * 200})
    reg.close()
    sqlite3.connect(db).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    _damage(db)

    # The schema page still reads: the registry opens, and the damage is met by the first read of the records.
    reg = Registry(f"sqlite:///{db}")
    for read in (reg.list, lambda: reg.find("d3"), lambda: reg.find_by_hash("dataset", "abc"),
                 lambda: reg.children("abc"), lambda: reg.list_feedback()):
        with pytest.raises(RegistryUnavailable) as err:
            read()
        message = str(err.value)
        assert "\n" not in message
        assert "damaged" in message and str(db) in message and ".recover" in message
    reg.close()
    # doctor reads every page, so it says so before any command trips over it
    assert registry_state(f"sqlite:///{db}") != "schema v3 (current)"
    assert "malformed" in registry_state(f"sqlite:///{db}") or "damaged" in registry_state(f"sqlite:///{db}")


def test_a_registry_url_whose_port_is_not_a_number_is_one_line_with_the_password_hidden() -> None:
    with pytest.raises(UserError) as err:
        Registry("postgresql+psycopg://me:hunter2@127.0.0.1:5543x/llmkit")
    message = str(err.value)
    assert "5543x" in message and "port must be a number" in message
    assert "hunter2" not in message and "\n" not in message


def test_a_postgresql_database_gone_mid_command_is_one_line(pg_database: str, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    reg = Registry(pg_database)
    reg.add("model", "m", path=folder)
    _drop(pg_database)  # the server ends our session and the database is gone, as after a restore or a failover

    for call in (reg.list, lambda: reg.find("m"), lambda: reg.add("model", "m", path=folder)):
        with pytest.raises(RegistryUnavailable) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and "cannot open the registry at" in message
        assert "create that database" in message  # how to fix: what was wrong decides the hint
    reg.close()


def test_a_wrong_password_or_a_missing_database_says_how_to_fix_it(pg_url: str) -> None:
    server = sa.engine.make_url(pg_url)
    missing = server.set(database="llmkit_no_such_database").render_as_string(hide_password=False)
    with pytest.raises(UserError) as err:
        Registry(missing)
    assert "llmkit_no_such_database" in str(err.value) and "create that database" in str(err.value)

    nobody = server.set(username="llmkit_no_such_role", password="x").render_as_string(hide_password=False)
    with pytest.raises(UserError) as err:
        Registry(nobody)
    message = str(err.value)
    assert "\n" not in message
    # trust auth (the throw-away cluster) says the role does not exist; password auth says the password failed
    assert "fix the user in --db-url" in message or "check the user and password" in message
