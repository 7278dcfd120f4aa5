"""`llmkit gc`: what a workspace holds that nothing uses (registry.cleanup), listed with its size, removed on yes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from llmkit.cli.common import Ctx, confirm, console
from llmkit.cli.options import configured
from llmkit.errors import UserError
from llmkit.registry import safe_url


def _refuse_a_registry_not_there(ctx: Ctx) -> None:
    """A SQLite registry named by a URL whose file does not exist would be made, empty, and name none of the
    workspace's folders: gc would have removed every one of them (a stale $LLMKIT_DB_URL, a typo in a path)."""
    url = ctx._db_url() or os.environ.get("LLMKIT_DB_URL") or ""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise UserError(f"no registry at {url.removeprefix('sqlite:///')}: gc reads the registry to know what is in use, "
                        "and an empty one would make every folder look unused; check --db-url and $LLMKIT_DB_URL "
                        "(or run gc where the registry is)")


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit gc --dry-run, then llmkit gc --failed-runs --yes   (from cron)")(gc)


@configured(None)
def gc(
    ctx: Ctx,
    failed_runs: Annotated[bool, typer.Option("--failed-runs", help="Also runs that failed or died (their process "
                                              "gone) that no model was made from and that have no checkpoint to resume from, with their folders.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would go; remove nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Remove them even when most of the workspace's folders look "
                                                        "unused (a registry that is not this workspace's).")] = False,
) -> None:
    """Remove what the workspace holds that nothing uses: folders no record points at (a command killed before
    it registered, rm --keep-files, a record removed from another machine), records whose folder is gone, and with
    --failed-runs the runs that failed. Folders changed in the last hour, and models an alias points at, stay."""
    from llmkit.models.aliases import current
    from llmkit.registry.cleanup import find_garbage, remove_garbage
    from llmkit.registry.run_state import run_state
    from llmkit.workspace import KINDS

    ctx.require_workspace()
    _refuse_a_registry_not_there(ctx)
    protected = {move.model_id for move in current(ctx.registry).values() if move.model_id}
    garbage = find_garbage(ctx.registry, ctx.ws.root, KINDS, failed_runs=failed_runs, protected=protected)
    if garbage.folders and garbage.not_this_workspace:
        raise UserError(f"the registry {safe_url(ctx.registry.url)} names none of the {len(garbage.folders)} folders in "
                        f"{ctx.ws.root}: it is not this workspace's registry (check --db-url and $LLMKIT_DB_URL); "
                        "nothing was removed")
    unused, seen = len(garbage.folders), garbage.folders_seen
    if not dry_run and not force and unused >= 4 and 2 * unused > seen:  # a crash leaves a few, not most
        raise UserError(f"{unused} of the {seen} folders in {ctx.ws.root} look unused by the registry "
                        f"{safe_url(ctx.registry.url)}: is it this workspace's? (check --db-url and $LLMKIT_DB_URL); "
                        "nothing was removed; llmkit gc --dry-run lists them, --force removes them")
    mib = garbage.bytes / 2**20
    if garbage and not dry_run:
        counts = {"folder": len(garbage.folders), "record": len(garbage.records), "run": len(garbage.runs)}
        listed = ", ".join(f"{n} {what}{'s' if n != 1 else ''}" for what, n in counts.items() if n)
        confirm(yes, f"remove {listed} ({mib:.1f} MiB)?", "gc")
        remove_garbage(ctx.registry, garbage)
    removed = bool(garbage) and not dry_run
    result = {"folders": [str(p) for p in garbage.folders], "records": [r.id for r in garbage.records],
              "runs": [r.id for r in garbage.runs], "bytes": garbage.bytes, "removed": removed, "kept": garbage.kept}

    def human() -> None:
        if not garbage:
            console.print("nothing to remove: every folder has its record and every record its folder")
        else:
            table = Table(title=Text(("removed" if removed else "would remove") + f": {mib:.1f} MiB"))
            for col in ("what", "where", "MiB"):
                table.add_column(col, justify="right" if col == "MiB" else "left", overflow="fold")
            for path in garbage.folders:
                what = "folder, no record" if path.is_dir() else "file, no record"  # a stray file was called a folder
                table.add_row(what, Text(str(path)), f"{garbage.sizes[str(path)] / 2**20:.1f}")
            for rec in garbage.records:
                table.add_row(Text(f"{rec.type} {rec.ref}, folder gone"), Text(str(rec.path)), "0.0")
            for rec in garbage.runs:
                table.add_row(Text(f"run {rec.ref}, {run_state(rec.metrics)}"), Text(str(rec.path)),
                              f"{garbage.sizes.get(str(rec.path), 0) / 2**20:.1f}")
            console.print(table)
        for line in garbage.kept:
            console.print(f"kept: {line}", markup=False, highlight=False)

    ctx.emit(result, human)
