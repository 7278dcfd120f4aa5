"""`llmkit tune STAGE`: parse flags, run the study, print its best trials; `show_study` is `llmkit show STUDY`."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from llmkit.cli.common import Ctx, console
from llmkit.cli.options import configured

EXAMPLE = "Example: llmkit tune classify --data sms --trials 20 --timeout 30m"


def register(app: typer.Typer) -> None:
    app.command(epilog=EXAMPLE)(tune)


@configured("tune", skip=("stage",))
def tune(ctx: Ctx, cfg, *, stage: Annotated[str, typer.Argument(help="pretrain | sft | classify | dpo | orpo | kto | grpo", show_default=False)]) -> None:
    """Search a stage's hyper-parameters on Optuna: TPE, pruning from the evaluations, a time budget; every
    trial a registered run, the best trial's model kept. Trials start from the stage's section of --config
    (e.g. classify: {max_length: 64}). The same --study and --storage on several machines work on one study."""
    from llmkit.tune import tune as run_tune

    cfg = ctx.section("tune", **ctx.given, stage=stage)
    stage_cfg = ctx.section(cfg.stage)  # the config file's section for the stage: what every trial starts from
    result = run_tune(cfg, stage_cfg, ctx.ws, ctx.registry, console=ctx.log)
    out = {"study": result.name, "id": result.record_id, "folder": str(result.folder), "metric": result.metric,
           "direction": result.direction, "states": result.states, "best": result.best, "best_trials": result.trials,
           "reports": result.reports, "seconds": result.seconds}
    if result.stopped_by:
        out["stopped_by"] = result.stopped_by
    # no completed trial: the summary said so, and a table of headers alone said nothing more
    ctx.emit(out, lambda: result.trials and console.print(trials_table(result.name, result.metric, result.trials)))
    if result.exit_code:  # 130 / 143, as a process a signal ended, after the summary
        raise typer.Exit(result.exit_code)
    if result.best is None:  # nothing to keep: a script's `tune && serve` must not go on (the summary said why)
        raise typer.Exit(1)


def trials_table(study: str, metric: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"study {study}: best trials by {metric}")
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["trial", metric]
    for col in columns:
        table.add_column(col, justify="right" if col not in ("run",) else "left")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    return table


def _cell(v: Any) -> Text:
    if v is None:
        return Text("")
    return Text(f"{v:.4g}" if isinstance(v, float) else str(v))  # a categorical choice is the user's text


def show_study(ctx: Ctx, rec) -> bool:
    """`llmkit show STUDY`: the study's best trials as a table (False when `rec` is not a study)."""
    if rec.type != "run" or rec.kind != "study":
        return False
    m = rec.metrics
    rows = m.get("best_trials", [])
    children = ctx.registry.children(rec.id)
    result = {**rec.to_json(), "trials": [c.id for rel, c in children if rel == "trial_of"]}

    def human() -> None:
        console.print(f"[bold]study {rec.ref}[/bold]  id {rec.id}  {rec.params.get('stage')} on {rec.params.get('data')}, "
                      f"{rec.params.get('metric')} ({rec.params.get('direction')}); created {rec.created}")
        console.print(f"folder: {rec.path}")
        if not m:
            console.print("no finished study yet: the table is written when a tune process ends")
            return
        console.print(", ".join(f"{v} {k}" for k, v in m.get("states", {}).items())
                      + (f"; best model {m['best']['model']}" if m.get("best") and m["best"].get("model") else ""))
        console.print(trials_table(rec.name, m.get("metric", ""), rows))
        for path in m.get("reports", []):
            console.print(f"  {path}")

    ctx.emit(result, human)
    return True
