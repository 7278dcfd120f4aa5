"""The registry's tables and the migrations that bring an older workspace's database up to date.

The schema carries its version in `llmkit_schema`; `MIGRATIONS[v - 1]` takes a database from v - 1 to v.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

metadata = sa.MetaData()
schema_table = sa.Table("llmkit_schema", metadata, sa.Column("version", sa.Integer, nullable=False))
records = sa.Table(
    "records",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("path", sa.Text, nullable=True),
    sa.Column("content_hash", sa.String(128), nullable=True),
    sa.Column("params", sa.Text, nullable=False, default="{}"),
    sa.Column("metrics", sa.Text, nullable=False, default="{}"),
    sa.UniqueConstraint("type", "name", "version", name="uq_records_type_name_version"),
)
lineage = sa.Table(
    "lineage",
    metadata,
    sa.Column("child_id", sa.String(32), nullable=False),
    sa.Column("parent_id", sa.String(32), nullable=False),
    sa.Column("relation", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("child_id", "parent_id", "relation"),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("response_id", sa.String(64), nullable=True),
    sa.Column("rating", sa.Integer, nullable=True),
    sa.Column("prompt", sa.Text, nullable=True),
    sa.Column("response", sa.Text, nullable=True),
    sa.Column("correction", sa.Text, nullable=True),
    sa.Column("extra", sa.Text, nullable=False, default="{}"),
)

# Every move of a model alias (`llmkit promote`), oldest first: an alias points where its last move put it.
alias_moves = sa.Table(
    "alias_moves", metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("alias", sa.String(100), nullable=False, index=True),
    sa.Column("model_id", sa.String(32), nullable=False),
    sa.Column("model_ref", sa.String(220), nullable=False),
    sa.Column("previous_id", sa.String(32), nullable=True),
    sa.Column("previous_ref", sa.String(220), nullable=True),
    sa.Column("moved_at", sa.Float, nullable=False),
    sa.Column("moved_by", sa.String(200), nullable=False),
    sa.Column("note", sa.Text, nullable=False, default=""),
)


def _migrate_1(conn: sa.Connection) -> None:
    records.create(conn, checkfirst=True)
    lineage.create(conn, checkfirst=True)


def _migrate_2(conn: sa.Connection) -> None:
    # v2: served feedback, and a content-hash index so "does this dataset exist?" stays fast.
    feedback.create(conn, checkfirst=True)
    # Plain DDL: an sa.Index(...) here would attach itself to `records` on every call, and the next
    # fresh database's records.create() would then emit the same CREATE INDEX twice.
    conn.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_records_hash ON records (type, content_hash)"))


def _migrate_3(conn: sa.Connection) -> None:
    alias_moves.create(conn, checkfirst=True)  # v3: model aliases and their history


MIGRATIONS: list[Callable[[sa.Connection], None]] = [_migrate_1, _migrate_2, _migrate_3]
SCHEMA_VERSION = len(MIGRATIONS)


def registry_state(url: str) -> str:
    """What `llmkit doctor` says of a registry, read without writing or migrating: its schema, or why it cannot be read."""
    if url.startswith("sqlite") and not Path(sa.engine.make_url(url).database or "").exists():
        return "none yet (llmkit init, or the first command that registers something, makes it)"
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 10} if url.startswith("postgresql") else {})
        with engine.connect() as conn:
            version = (conn.execute(sa.select(schema_table.c.version)).scalar()
                       if sa.inspect(conn).has_table(schema_table.name) else None)
            # a page overwritten in the middle of the file reads fine until a command reaches it: look at every page
            damage = (conn.exec_driver_sql("PRAGMA quick_check").scalar() if url.startswith("sqlite") else "ok")
        engine.dispose()
    except Exception as err:  # a driver missing, a server down, a role refused: said, never raised
        return f"cannot be read: {' '.join(str(getattr(err, 'orig', err)).split())[:200]}"
    if damage != "ok":
        return (f"damaged ({' '.join(str(damage).split())[:120]}): restore registry.db from a backup, or recover its "
                "rows with sqlite3's .recover (any command that meets the damage prints how)")
    if version is None:
        return "empty (llmkit makes its tables when it first opens it)"
    if version < SCHEMA_VERSION:
        return f"schema v{version}: this llmkit migrates it to v{SCHEMA_VERSION} when it opens it"
    if version > SCHEMA_VERSION:
        return f"schema v{version}, newer than this llmkit (v{SCHEMA_VERSION}): upgrade llmkit"
    return f"schema v{version} (current)"
