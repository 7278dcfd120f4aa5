"""Model aliases: a stable name (`prod`) that points at one registered model and can be moved.

`llmkit promote MODEL --alias NAME` moves an alias; every command that takes MODEL resolves one
(`models.io.resolve_model`), so `llmkit serve prod` serves what `prod` points at. Each move is a row
of the registry's `alias_moves` table (who, when, from, to, why) and an alias points where its latest
move put it, so the history is the table itself and nothing is ever overwritten. Removing an alias is a
move to nothing (`model_id` empty): `llmkit rm ALIAS`, or `llmkit rm MODEL --force` for the aliases on MODEL.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from llmkit.errors import UserError
from llmkit.registry import Record, Registry, alias_moves, check_name


@dataclass
class AliasMove:
    alias: str
    model_id: str
    model_ref: str
    previous_id: str | None
    previous_ref: str | None
    moved_at: float
    moved_by: str
    note: str
    seq: int | None = None

    @property
    def moved(self) -> str:
        return datetime.fromtimestamp(self.moved_at, UTC).isoformat(timespec="seconds")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "moved": self.moved}


def _move(row: Any) -> AliasMove:
    return AliasMove(**{k: v for k, v in row._mapping.items()})


def mover() -> str:
    """Who moves an alias: $LLMKIT_USER (a CI job can name itself), else the login name."""
    if os.environ.get("LLMKIT_USER"):
        return os.environ["LLMKIT_USER"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def history(registry: Registry, alias: str | None = None) -> list[AliasMove]:
    """Every move of `alias` (of every alias when None), oldest first."""
    query = sa.select(alias_moves).order_by(alias_moves.c.seq)
    if alias is not None:
        query = query.where(alias_moves.c.alias == alias)
    with registry.engine.connect() as conn:
        return [_move(row) for row in conn.execute(query)]


def _latest(conn: sa.Connection, alias: str) -> AliasMove | None:
    row = conn.execute(sa.select(alias_moves).where(alias_moves.c.alias == alias)
                       .order_by(alias_moves.c.seq.desc()).limit(1)).first()
    return _move(row) if row is not None else None


def latest_move(registry: Registry, alias: str) -> AliasMove | None:
    with registry.engine.connect() as conn:
        return _latest(conn, alias)


def current(registry: Registry) -> dict[str, AliasMove]:
    """Each alias and the move that put it where it points now (removed aliases left out)."""
    latest = {move.alias: move for move in history(registry)}  # oldest first: the last one wins
    return {alias: move for alias, move in latest.items() if move.model_id}


def aliases_on(registry: Registry, model_id: str) -> list[str]:
    """The aliases pointing at a model now."""
    return sorted(alias for alias, move in current(registry).items() if move.model_id == model_id)


def remove_alias(registry: Registry, alias: str, note: str = "", who: str | None = None) -> AliasMove:
    """Remove `alias` (a move to nothing, kept in its history); one line when there is no such alias."""
    def write(conn: sa.Connection) -> AliasMove:
        before = _latest(conn, alias)
        if before is None or not before.model_id:
            raise UserError(f"no alias '{alias}'" + (" (it was removed)" if before is not None else ""))
        move = AliasMove(alias, "", "", before.model_id, before.model_ref, time.time(), who or mover(), note)
        values = {k: v for k, v in asdict(move).items() if k != "seq"}
        move.seq = conn.execute(alias_moves.insert().values(**values)).inserted_primary_key[0]
        return move

    return registry.write(write)


def alias_target(registry: Registry, name: str) -> Record | None:
    """The model record the alias `name` points at; None when `name` is no alias."""
    move = latest_move(registry, name)
    if move is None or not move.model_id:  # never an alias, or removed
        return None
    same_name = registry.list("model", name=name)
    if same_name:  # registered after the alias was made: neither may silently win
        raise UserError(f"'{name}' is both an alias (-> {move.model_ref}) and a model ({same_name[-1].ref}): "
                        f"say {same_name[-1].ref} for the model, or rename it (an alias never shadows a model)")
    rec = registry.find(move.model_id, "model")
    if rec is None or rec.id != move.model_id:
        raise UserError(f"alias '{name}' points at {move.model_ref} ({move.model_id}), which was removed; "
                        f"move it: llmkit promote MODEL --alias {name}")
    return rec


def move_alias(registry: Registry, alias: str, model_ref: str, note: str = "", who: str | None = None,
               builtins: Collection[str] = ()) -> tuple[AliasMove, bool]:
    """Point `alias` at the registered model `model_ref` (a name, name:vN, id or another alias).

    (the move, True) when it moved; (its current move, False) when it already pointed there.
    `builtins`: the built-in models' names (models.io.BUILTIN_MODELS), which an alias may not take.
    """
    check_name(alias, "alias", "--alias")
    if alias in builtins:
        raise UserError(f"alias '{alias}' would shadow the built-in model {alias}; choose another alias name")
    shadowed = registry.list("model", name=alias)
    if shadowed:
        raise UserError(f"alias '{alias}' would shadow the model {shadowed[-1].ref}; an alias needs a name no model has")
    target = alias_target(registry, model_ref) or registry.find(model_ref, "model")
    if target is None:
        builtin = " (a built-in is not registered: llmkit import SOURCE --name NAME registers one)" if model_ref in builtins else ""
        name, sep, version = model_ref.rpartition(":v")
        other = registry.find(model_ref)
        if sep and version.isdigit() and (versions := registry.list("model", name=name)):  # as every other command says it
            builtin = f": {name} has versions {', '.join(f'v{r.version}' for r in versions)}"
        elif other is not None:  # `promote chats`: a dataset of that name
            builtin = f" ({other.ref} is a {other.type})"
        raise UserError(f"no model '{model_ref}' in the registry{builtin}; an alias points at a registered model "
                        "(llmkit ls models lists them)")

    def write(conn: sa.Connection) -> tuple[AliasMove, bool]:
        before = _latest(conn, alias)
        if before is not None and before.model_id == target.id:
            return before, False
        pointed = before is not None and before.model_id  # a removed alias points nowhere before this move
        move = AliasMove(alias, target.id, target.ref, before.model_id if pointed else None,
                         before.model_ref if pointed else None, time.time(), who or mover(), note)
        values = {k: v for k, v in asdict(move).items() if k != "seq"}
        move.seq = conn.execute(alias_moves.insert().values(**values)).inserted_primary_key[0]
        return move, True

    return registry.write(write)


# Here rather than in eval/gate.py, which writes these records: `promote` reads the last one on every move, and eval's
# modules import torch (1.2 s of a command that answers in 0.6 s without it).
def last_gate(registry: Registry, model_id: str) -> Record | None:
    """The latest gate `llmkit compare` ran with this model as TUNED."""
    gates = [rec for relation, rec in registry.children(model_id) if relation == "gated" and rec.kind == "compare"]
    return max(gates, key=lambda r: r.created_at) if gates else None
