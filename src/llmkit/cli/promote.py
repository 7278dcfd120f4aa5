"""`llmkit promote MODEL --alias NAME`: point an alias (prod, staging) at a registered model, with its history.

`llmkit show NAME` shows an alias and every move of it; `llmkit ls aliases` lists them (both through
`show_alias` / `list_aliases` here, called from cli.core).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from llmkit.cli.common import Ctx, console, valid_text
from llmkit.cli.options import configured
from llmkit.errors import UserError


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit promote my-sft --alias prod --require-pass   (after: llmkit compare smol my-sft "
                       "--data my-chats; then: llmkit serve prod)")(promote)


@configured(None)
def promote(
    ctx: Ctx,
    model: Annotated[str, typer.Argument(help="Registered model (name, name:vN, id, or another alias).", show_default=False)],
    alias: Annotated[str, typer.Option("--alias", help="The alias to point at MODEL, e.g. prod.", show_default=False)],
    require_pass: Annotated[bool, typer.Option("--require-pass", help="Refuse unless MODEL's last gate "
                                                                      "(llmkit compare BASE MODEL --data NAME) passed.")] = False,
    note: Annotated[str | None, typer.Option(help="Why, kept in the alias's history.", show_default=False)] = None,
) -> None:
    """Point an alias at a model: every command taking MODEL (serve, generate, eval...) resolves it, and each move
    is recorded (who, when, from -> to); llmkit show ALIAS lists the history."""
    from llmkit.models.aliases import last_gate, move_alias
    from llmkit.models.io import BUILTIN_MODELS, resolve_model

    if note is not None:
        valid_text(note, "--note")
    if require_pass:
        target = resolve_model(model, ctx.registry)
        if target.id is not None:
            _require_pass(ctx, target)
    move, moved = move_alias(ctx.registry, alias, model, note or "", builtins=BUILTIN_MODELS)
    # Said either way: promoting without --require-pass put an ungated (or failed) model behind the alias silently
    gated = last_gate(ctx.registry, move.model_id) if move.model_id else None
    gate_said = None if gated is None else {"id": gated.id, "verdict": gated.params.get("verdict"),
                                            "base": gated.params.get("base"), "dataset": gated.params.get("dataset")}
    result = {**move.to_json(), "changed": moved, "gate": gate_said}

    def human() -> None:
        if not moved:
            console.print(f"{alias} already points at {move.model_ref} (since {move.moved}, by {move.moved_by})")
        else:
            console.print(f"[bold]{alias}[/bold] -> {move.model_ref}" + (f" (was {move.previous_ref})" if move.previous_ref else ""))
        if gate_said is not None:
            console.print(f"  last gate: {gate_said['verdict']} against {gate_said['base']} on {gate_said['dataset']} "
                          f"(llmkit show {gate_said['id']})", markup=False, highlight=False)
        elif move.model_id:
            console.print(f"  not gated: llmkit compare BASE {move.model_ref} --data NAME scores it against its base; "
                          "--require-pass refuses a model whose last gate did not pass", markup=False, highlight=False)

    ctx.emit(result, human)


def _require_pass(ctx: Ctx, target) -> None:
    from llmkit.models.aliases import last_gate

    rec = last_gate(ctx.registry, target.id)
    if rec is None:
        raise UserError(f"--require-pass: {target.ref} has not been through the gate; run llmkit compare BASE "
                        f"{target.name} --data NAME first")
    if rec.params.get("verdict") != "pass":
        reasons = "; ".join(rec.params.get("reasons") or []) or "see llmkit show " + rec.id
        raise UserError(f"--require-pass: {target.ref}'s last gate against {rec.params.get('base')} on "
                        f"{rec.params.get('dataset')} failed ({reasons}); promote without --require-pass to override")


def show_alias(ctx: Ctx, name: str) -> bool:
    """Print alias `name` and its history (llmkit show); False when `name` is no alias."""
    from llmkit.models.aliases import history

    moves = history(ctx.registry, name)
    if not moves:
        return False
    result = {"alias": name, "model_id": moves[-1].model_id, "model_ref": moves[-1].model_ref,
              "history": [m.to_json() for m in moves]}

    def human() -> None:
        last = moves[-1]
        console.print(f"[bold]alias {name}[/bold] -> {last.model_ref} ({last.model_id})" if last.model_id else
                      f"[bold]alias {name}[/bold] was removed (it pointed at {last.previous_ref})")
        table = Table(title="history")
        for column in ("moved", "by", "from", "to", "note"):
            table.add_column(column)
        for m in moves:
            table.add_row(m.moved, Text(m.moved_by), m.previous_ref or "-", m.model_ref or "(removed)", Text(m.note or ""))
        console.print(table)

    ctx.emit(result, human)
    return True


def list_aliases(ctx: Ctx) -> None:
    """Every alias, where it points, and its last move (llmkit ls aliases)."""
    from llmkit.models.aliases import current

    moves = current(ctx.registry)
    # an alias whose model was removed (before rm refused that) still resolves to nothing: say so in the list
    gone = {name for name, m in moves.items() if ctx.registry.find(m.model_id, "model") is None}

    def human() -> None:
        if not moves:
            console.print("no aliases yet; point one at a model with llmkit promote MODEL --alias NAME")
            return
        table = Table()
        for column in ("alias", "model", "id", "moved", "by"):
            table.add_column(column)
        for name, m in sorted(moves.items()):
            table.add_row(name, m.model_ref + (" (removed)" if name in gone else ""), m.model_id, m.moved, m.moved_by)
        console.print(table)
        if gone:
            console.print(f"alias {', '.join(sorted(gone))} point(s) at a removed model: move it (llmkit promote MODEL "
                          "--alias NAME) or remove it (llmkit rm NAME)")

    ctx.emit([{**m.to_json(), "model_removed": name in gone} for name, m in sorted(moves.items())], human)
