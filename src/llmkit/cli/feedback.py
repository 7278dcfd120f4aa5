"""`llmkit forget` (feedback and request logs removed by age, model or response) and `llmkit ls feedback`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from llmkit.cli.common import Ctx, confirm, console
from llmkit.cli.options import configured
from llmkit.errors import UserError


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit forget --before 2026-06-01 --yes   (a retention rule);  "
                       "llmkit forget --response-id chatcmpl-3f2a...   (one person's request)")(forget)


@configured(None)
def forget(
    ctx: Ctx,
    before: Annotated[str | None, typer.Option("--before", help="Rows older than this ISO date or time (UTC unless it "
                                                                "says).", show_default=False)] = None,
    model: Annotated[str | None, typer.Option("--model", help="Rows of this served model name.",
                                              show_default=False)] = None,
    response_id: Annotated[list[str] | None, typer.Option("--response-id", help="Rows of this response (repeatable).",
                                                          show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Remove stored feedback and request logs (prompts, answers, corrections) matching every filter given."""
    from llmkit.data.feedback import forget_feedback

    ctx.require_workspace()
    for option, values in (("--model", [model] if model is not None else []), ("--response-id", response_id or [])):
        if any(not v.strip() for v in values):  # it answered "nothing matched", as if the filter had been read
            raise UserError(f"{option} is empty: give the {'served model name' if option == '--model' else 'id of a response (chatcmpl-...)'} "
                            "whose rows to remove")
    filters = {"before": before, "model": model, "response_ids": response_id or None}
    count = forget_feedback(ctx.registry, **filters, count_only=True)
    if count:
        confirm(yes, f"remove {count} feedback and request-log rows (prompts, answers, corrections)?", "forget")
        count = forget_feedback(ctx.registry, **filters)
    ctx.emit({"removed": count}, lambda: console.print(f"removed {count} feedback and request-log rows" if count else
                                                        "nothing matched: no row removed"))


def list_feedback(ctx: Ctx) -> None:
    """`llmkit ls feedback`: what the registry holds of users' text, newest last."""
    rows = ctx.registry.list_feedback()

    def human() -> None:
        if not rows:
            console.print("no feedback or request logs stored")
            return
        table = Table()
        for column in ("id", "created", "model", "kind", "rating", "response_id", "prompt"):
            table.add_column(column, overflow="fold" if column == "prompt" else "ellipsis")
        from datetime import UTC, datetime

        for r in rows:
            kind = r["extra"].get("kind") or "feedback"
            table.add_row(r["id"], datetime.fromtimestamp(r["created_at"], UTC).isoformat(timespec="seconds"),
                          Text(r["model"]), kind, "" if r["rating"] is None else str(r["rating"]),
                          Text(r["response_id"] or ""), Text((r["prompt"] or "")[:60]))
        console.print(table)
        console.print(f"{len(rows)} rows; llmkit forget removes them by age, model or response")

    ctx.emit(rows, human)
