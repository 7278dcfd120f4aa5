"""Workspace commands: version, doctor, init, ls, show, rm, config show."""

from __future__ import annotations

import importlib
import os
import platform
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from llmkit import __version__
from llmkit.cli.common import Ctx, DbUrlOpt, JsonOpt, WorkspaceOpt, confirm, console
from llmkit.cli.options import configured
from llmkit.config import render_defaults
from llmkit.errors import UserError
from llmkit.registry import RECORD_TYPES

OPTIONAL_BACKENDS = ("transformers", "peft", "llama_cpp", "onnxruntime", "captum", "playwright", "psycopg")
RESUMABLE_STAGES = ("pretrain", "sft", "classify", "distill", "dpo", "orpo", "kto", "grpo")  # train STAGE --resume
LS_KINDS = {"datasets": "dataset", "runs": "run", "models": "model", "evals": "eval"}


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: llmkit version --json")(version)
    app.command(epilog="Example: llmkit doctor --workspace ./ws")(doctor)
    app.command(epilog="Example: llmkit init --workspace ./ws")(init)
    app.command(name="ls", epilog="Example: llmkit ls models")(ls)
    app.command(epilog="Example: llmkit show shakespeare")(show)
    app.command(epilog="Example: llmkit rm shakespeare-nano:v1 --yes   (a dataset or run things were made from needs --force)")(rm)
    config_app = typer.Typer(help="Config sections: each command's keys with their defaults.", no_args_is_help=True,
                             epilog="Example: llmkit config show pretrain > pretrain.yaml")
    config_app.command(name="show", epilog="Example: llmkit config show pretrain > pretrain.yaml")(config_show)
    app.add_typer(config_app, name="config")


def version(json_out: JsonOpt = False) -> None:
    """Print the llmkit version."""
    from llmkit.registry import SCHEMA_VERSION

    # the registry schema this llmkit writes: which llmkit may share a team's database with which
    Ctx(json=json_out).emit({"llmkit": __version__, "registry_schema": SCHEMA_VERSION},
                            lambda: console.print(f"llmkit {__version__} (registry schema v{SCHEMA_VERSION})"))


def doctor(json_out: JsonOpt = False, workspace: WorkspaceOpt = None, db_url: DbUrlOpt = None) -> None:
    """Check the machine and the workspace: Python, torch, threads, device, bf16, the font for Chinese plot labels, which
    optional backends import, and the workspace's registry and its state (read only: nothing is made or migrated)."""
    import torch

    from llmkit.data.figures import cjk_font
    from llmkit.models.cpu_features import cpu_has_fast_bf16

    device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    backends = {}
    for name in OPTIONAL_BACKENDS:
        try:
            mod = importlib.import_module(name)
            backends[name] = getattr(mod, "__version__", "ok")
        except Exception:
            backends[name] = None
    result = {
        "llmkit": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "device": device,
        "cuda_devices": torch.cuda.device_count(),
        "bf16_cpu_fast": cpu_has_fast_bf16(),
        "cjk_plot_font": cjk_font(),
        **_workspace_state(workspace, db_url),
        "backends": backends,
        "extras": _extras(),
    }

    def human() -> None:
        table = Table(title="llmkit doctor", show_header=False)
        for key, value in result.items():
            if key == "cjk_plot_font" and value is None:  # Chinese labels in plots would be boxes
                table.add_row(key, "[yellow]none: Chinese labels in plots show as boxes; install a CJK font "
                                   "(Debian: apt install fonts-noto-cjk)[/yellow]")
            elif key not in ("backends", "extras"):
                table.add_row(key, str(value))
        for name, ver in backends.items():
            table.add_row(f"  {name}", f"[green]{ver}[/green]" if ver else "[yellow]not installed[/yellow]")
        for extra, missing in result["extras"].items():
            table.add_row(escape(f"  llmkit[{extra}]"), "[green]installed[/green]" if not missing else
                          f"[yellow]missing {', '.join(missing)}: pip install {escape(repr(f'llmkit[{extra}]'))}[/yellow]")
        console.print(table)

    Ctx(json=json_out).emit(result, human)


def _extras() -> dict[str, list[str]]:
    """Each optional extra of the installed llmkit and the distributions of it that are not installed (read from
    llmkit's own metadata, so it follows pyproject.toml); empty when llmkit itself is not installed."""
    import re
    from importlib import metadata

    try:
        requirements = metadata.requires("llmkit") or []
    except metadata.PackageNotFoundError:
        return {}
    extras: dict[str, list[str]] = {}
    for line in requirements:
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", line)
        if not extra or extra.group(1) in ("all", "dev"):
            continue
        dist = re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0]
        missing = extras.setdefault(extra.group(1), [])
        try:
            metadata.version(dist)
        except metadata.PackageNotFoundError:
            missing.append(dist)
    return extras


def _workspace_state(workspace: Path | None = None, db_url: str | None = None) -> dict[str, str]:
    """The workspace --workspace (else $LLMKIT_HOME) names and its registry, looked at without creating or migrating
    either."""
    from llmkit.registry import registry_state, safe_url
    from llmkit.workspace import resolve_workspace

    root = resolve_workspace(workspace)
    url = db_url or os.environ.get("LLMKIT_DB_URL") or f"sqlite:///{root / 'registry.db'}"
    if root.exists() and not root.is_dir():  # "none yet (llmkit init ... makes it)", where init is refused
        return {"workspace": f"{root} (a file, not a folder: pass --workspace with a folder)", "registry": safe_url(url),
                "registry_state": "none: the workspace is a file" if not db_url and not os.environ.get("LLMKIT_DB_URL")
                else registry_state(url)}
    return {"workspace": f"{root}" + ("" if root.exists() else " (not made yet)"), "registry": safe_url(url),
            "registry_state": registry_state(url)}


@configured(None)
def init(ctx: Ctx) -> None:
    """Create a workspace (folders and registry). Safe to run again."""
    ctx.section("workspace")  # validates the whole file: a typo anywhere is reported here
    reg = ctx.registry
    result = {"workspace": str(ctx.ws.root), "registry": reg.engine.url.render_as_string(hide_password=True),
              "schema_version": reg.schema_version()}
    ctx.emit(result, lambda: console.print(f"workspace ready at [bold]{ctx.ws.root}[/bold] (registry: {result['registry']})"))


@configured(None)
def ls(
    ctx: Ctx,
    kind: Annotated[str | None, typer.Argument(help="datasets | runs | models | evals | studies | aliases | feedback (default: all records)")] = None,
) -> None:
    """List what the registry holds."""
    if kind is not None and kind not in LS_KINDS and kind not in ("studies", "aliases", "feedback"):
        raise UserError(f"unknown kind '{kind}'; use one of: {', '.join(LS_KINDS)}, studies, aliases, feedback")
    missing = ctx.missing_workspace()
    if missing is not None:  # listed as empty, and not made: a mistyped path must not become a workspace
        return ctx.emit([], lambda: console.print(f"no workspace at {missing}, so nothing registered there; check "
                                                   "--workspace (or $LLMKIT_HOME), or try [bold]llmkit demo[/bold]"))
    if kind == "aliases":
        from llmkit.cli.promote import list_aliases

        return list_aliases(ctx)
    if kind == "feedback":
        from llmkit.cli.feedback import list_feedback

        return list_feedback(ctx)
    if kind == "studies":  # a tune study is a run record of kind "study"; its trials are runs too
        recs = [r for r in ctx.registry.list("run") if r.kind == "study"]
    else:
        recs = ctx.registry.list(LS_KINDS[kind] if kind else None)

    def human() -> None:
        if not recs:  # "nothing registered yet" misled in a workspace full of models that has no study
            console.print(f"no {kind} here yet" if kind and ctx.registry.list(None) else
                          "nothing registered yet; try [bold]llmkit demo[/bold]")
            return
        table = Table()
        runs = any(r.type == "run" for r in recs)
        for col in ("id", "type", "name", "version", "kind", *(("state",) if runs else ()), "created", "path"):
            # a narrow terminal folds names and paths rather than cutting them to 'shakespe…' (three models looked alike)
            # and an id, which commands take, is never cut
            table.add_column(col, overflow="fold" if col in ("name", "path") else "ellipsis", no_wrap=col == "id",
                             min_width=12 if col == "id" else None)
        for r in recs:
            state = (state_text(r),) if runs else ()
            table.add_row(r.id, r.type, Text(r.name), str(r.version), r.kind, *state, r.created, Text(r.path or ""))
        console.print(table)

    ctx.emit([_with_state(r) for r in recs], human)


def _with_state(rec) -> dict:
    from llmkit.registry.run_state import run_state

    out = rec.to_json()
    if rec.type == "run":
        out["state"] = run_state(rec.metrics)
    return out


def state_text(rec) -> str:
    """A run's state for a table: "died" when its process is gone, where a run on another machine runs."""
    from llmkit.registry.run_state import RUNNING, here, run_state

    if rec.type != "run":
        return ""
    state = run_state(rec.metrics) or ""
    return f"running on {rec.metrics.get('host')}" if state == RUNNING and not here(rec.metrics) else state


@configured(None)
def show(
    ctx: Ctx,
    ref: Annotated[str, typer.Argument(help="name, name:vN, id, a model alias (with its history) or a study (its best trials)")],
) -> None:
    """Show one record with its lineage, or an alias with its history."""
    from llmkit.cli.promote import show_alias

    ctx.require_workspace()
    if show_alias(ctx, ref):
        return
    rec = ctx.registry.get(ref)
    from llmkit.cli.tune import show_study

    if show_study(ctx, rec):  # a study: its best trials as a table
        return
    parents = [{"relation": rel, "id": p.id, "type": p.type, "ref": p.ref} for rel, p in ctx.registry.parents(rec.id)]
    children = [{"relation": rel, "id": c.id, "type": c.type, "ref": c.ref} for rel, c in ctx.registry.children(rec.id)]
    result = {**_with_state(rec), "parents": parents, "children": children}

    def human() -> None:
        console.print(f"[bold]{rec.type} {rec.ref}[/bold]  id {rec.id}  kind {rec.kind}  created {rec.created}")
        console.print(f"path: {rec.path}")
        if result.get("state"):
            console.print(_state_line(rec, result["state"]), markup=False, highlight=False)
        if rec.params:
            console.print_json(data={"params": rec.params}, default=str)
        if rec.metrics:
            console.print_json(data={"metrics": rec.metrics}, default=str)
        for p in parents:
            console.print(f"  ← {p['relation']}: {p['type']} {p['ref']} ({p['id']})")
        for c in children:
            console.print(f"  → {c['relation']}: {c['type']} {c['ref']} ({c['id']})")

    ctx.emit(result, human)


def _refuse_a_running_run(rec, force: bool) -> None:
    """rm of a run still training took its folder from under it (the trainer then failed on its metrics file)."""
    from llmkit.registry.run_state import RUNNING, run_state

    if rec.type != "run" or force or run_state(rec.metrics) != RUNNING:
        return
    from llmkit.registry.run_state import here

    m = rec.metrics
    how = (f"Ctrl-C where it runs, or kill -TERM {m.get('pid')}: it writes a checkpoint" if here(m) else
           "Ctrl-C where it runs: it is on another machine or in another container, where its process id means "
           "something else; it writes a checkpoint")
    raise UserError(f"run {rec.ref} is running (process {m.get('pid')} on {m.get('host')}); stop it first ({how}), or "
                    "pass --force if it is gone")


def _state_line(rec, state: str) -> str:
    """show RUN's state line: since when, the error that ended it, and how to go on from a run that stopped."""
    from datetime import UTC, datetime

    from llmkit.registry.run_state import DIED, FAILED, STOPPED

    m = rec.metrics
    since = m.get("state_since")
    stamp = datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds") if since else None
    # a died run wrote nothing at its death: its time is when it last started or resumed
    line = f"state: {state_text(rec)}" + (f" since {stamp}" if stamp and state != DIED else "")
    if state == DIED:
        line += f" (process {m.get('pid')}, running since {stamp}, is gone: killed, or the machine went down)"
    elif m.get("error"):
        line += f": {m['error']}"
    # failed too: a full disk or a registry that went away ends a run that its checkpoint continues
    if state in (DIED, STOPPED, FAILED) and rec.path and any((Path(rec.path) / "checkpoints").glob("step-*")) \
            and rec.kind in RESUMABLE_STAGES:
        line += f"; continue with: llmkit train {rec.kind} --resume {rec.id}"
    return line


@configured(None)
def rm(
    ctx: Ctx,
    ref: Annotated[str, typer.Argument(help="name, name:vN, id, a model alias (removes the alias) or a study (with its trial runs)")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    keep_files: Annotated[bool, typer.Option("--keep-files", help="Remove the record but keep its folder.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Remove it even if models, datasets or runs were made from it, an alias points at it (the alias goes too) or its run looks still running.")] = False,
) -> None:
    """Remove a record (and its folder inside the workspace), or an alias."""
    from llmkit.models.aliases import aliases_on, latest_move, remove_alias

    ctx.require_workspace()
    move = latest_move(ctx.registry, ref)
    if move is not None and move.model_id and not ctx.registry.list("model", name=ref):  # an alias, not a record
        confirm(yes, f"remove alias {ref} (-> {move.model_ref})?")
        removed = remove_alias(ctx.registry, ref)
        ctx.emit({"removed_alias": ref, "was": removed.previous_ref},
                 lambda: console.print(f"removed alias {ref} (it pointed at {removed.previous_ref}; llmkit show {ref} "
                                       "keeps its history)"))
        return
    if move is not None and not move.model_id and not ctx.registry.list("model", name=ref):
        raise UserError(f"alias '{ref}' was removed already (it pointed at {move.previous_ref}); llmkit show {ref} has "
                        "its history")
    rec = ctx.registry.get(ref)
    _refuse_a_running_run(rec, force)
    # What was made from it would lose its lineage (and a run its --resume): refused unless --force.
    trials: list = []  # a study's trial runs go with it
    if rec.type == "run" and rec.kind == "study":
        from llmkit.tune.study import study_dependents

        trials, users = study_dependents(rec, ctx.registry)
        users = [(rel, r) for rel, r in users if rel != "trial_of"]  # a kept trial (a model's run) stays, unlinked
    else:
        users = [(relation, r) for relation, r in ctx.registry.children(rec.id) if r.type in ("model", "dataset", "run")]
    if users and not force:
        shown = ", ".join(f"{r.type} {r.ref} ({relation})" for relation, r in users[:5]) + (" ..." if len(users) > 5 else "")
        raise UserError(f"{rec.type} {rec.ref} is what {len(users)} record(s) were made from: {shown}; remove those "
                        "first, or pass --force to remove it anyway (their lineage will no longer name it)")
    # An alias (prod) serving it would point at nothing: `serve prod` fails at its next start.
    aliases = aliases_on(ctx.registry, rec.id) if rec.type == "model" else []
    if aliases and not force:
        named = ", ".join(aliases)
        raise UserError(f"model {rec.ref} is what alias {named} points at; move it first (llmkit promote MODEL --alias "
                        f"{aliases[0]}), remove it (llmkit rm {aliases[0]}), or pass --force to remove both")
    confirm(yes, f"remove {rec.type} {rec.ref} ({rec.id}) and its files?")
    # Asked before the record goes: a folder another record still points at is kept (workspaces made
    # before every version had its own folder hold versions that share one).
    sharing = ctx.registry.sharing_files(rec) if rec.path and not keep_files else []
    # an adapter made on it (--force) loads its weights from this folder: the folder stays, or the adapter stops working
    sharing += [r for relation, r in users if relation == "base_model" and r not in sharing] if not keep_files else []
    study_note = ""
    if rec.type == "run" and rec.kind == "study":
        from llmkit.tune.study import forget_study

        study_note = forget_study(rec, ctx.registry)
    for alias in aliases:  # --force: the aliases go with their model, each move kept in its history
        remove_alias(ctx.registry, alias, note=f"its model {rec.ref} was removed")
    ctx.registry.remove(rec.id)
    for trial in trials:
        ctx.registry.remove(trial.id)
        if trial.path and ctx.ws.root in Path(trial.path).resolve().parents:
            shutil.rmtree(trial.path, ignore_errors=True)
    removed_files = False
    if rec.path and not keep_files and not sharing:
        path = Path(rec.path)
        # Only delete inside the workspace: a model registered from elsewhere is the user's folder.
        if path.exists() and ctx.ws.root in path.resolve().parents:
            shutil.rmtree(path, ignore_errors=True)
            removed_files = True
    kept = f"; kept its folder, which {', '.join(r.ref for r in sharing)} also use" if sharing else ""
    if rec.path and not removed_files and not sharing and not keep_files and ctx.ws.root not in Path(rec.path).parents:
        # another workspace's folder (a registry shared by several machines) or one registered from elsewhere
        kept += f"; its folder {rec.path} is outside this workspace and was not deleted (delete it where it is)"
    kept += f"; removed alias {', '.join(aliases)}" if aliases else ""
    kept += f"; with its {len(trials)} trial runs" if trials else ""
    ctx.emit({"removed": rec.id, "ref": rec.ref, "type": rec.type, "files_removed": removed_files,
              "files_shared_with": [r.ref for r in sharing], "aliases_removed": aliases,
              "trials_removed": [t.ref for t in trials]},
             lambda: console.print(f"removed {rec.type} {rec.ref}" + (" and its files" if removed_files else "") + kept
                                   + study_note))





def config_show(
    stage: Annotated[str, typer.Argument(help="a config section, named after its command: workspace, data, from-feedback, "
                                               "pretrain, sft, classify, distill, dpo, orpo, kto, grpo, tune, predict, eval, "
                                               "compare, bench-model, quantize, prune, export, generate, serve, explain, bias, "
                                               "privacy, demo (the old names train, bench, feedback and audit still work)")],
    json_out: JsonOpt = False,
) -> None:
    """Print a config section's defaults as YAML, with a comment on every key: a start for your own --config file."""
    text = render_defaults(stage)
    if json_out:
        import yaml

        print(__import__("json").dumps(yaml.safe_load(text), indent=2))
    else:
        print(text, end="")


assert set(LS_KINDS.values()) == set(RECORD_TYPES)
