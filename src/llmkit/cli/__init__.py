"""The `llmkit` command: one typer app, a sub-command per stage. Thin: parse, call the stage, print.

Exit codes: 0 ok, 1 runtime failure, 2 user error. With --json the result goes to stdout as JSON
and everything else (logs, progress) to stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.markup import escape

from llmkit.cli.common import console, err_console
from llmkit.errors import UserError

app = typer.Typer(
    name="llmkit",
    help="Raw text to a trained, evaluated, served language model. Example: llmkit demo",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _register() -> None:
    # Imported here so `llmkit --help` lists everything while each module stays one job.
    from llmkit.cli import (
        audit,
        core,
        data,
        demo,
        eval,
        explain,
        feedback,
        gc,
        generate,
        importing,
        optimize,
        predict,
        promote,
        serve,
        train,
        tune,
    )

    core.register(app)
    importing.register(app)
    app.add_typer(data.app, name="data")
    app.add_typer(train.app, name="train")
    tune.register(app)
    app.add_typer(audit.app, name="audit")
    generate.register(app)
    predict.register(app)
    eval.register(app)
    promote.register(app)
    optimize.register(app)
    serve.register(app)
    explain.register(app)
    demo.register(app)
    feedback.register(app)
    gc.register(app)


_register()


def main() -> None:
    ctrl_c = _note_ctrl_c()
    try:
        # click returns (rather than raises) the exit code of typer.Exit in non-standalone mode.
        code = app(standalone_mode=False)
        if code == 130 and ctrl_c:  # typer turns a Ctrl-C into exit code 130 without a word
            err_console.print("interrupted")
        sys.exit(code if isinstance(code, int) else 0)
    except UserError as err:
        # escaped: the message quotes what the user typed (a path, a name, a YAML value), which may hold '[...]'
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.TyperException as err:  # click's (typer's vendored click's) usage errors
        sys.exit(_usage_error(err))
    except Exception as err:  # our own failures, or the machine's
        if os.environ.get("LLMKIT_DEBUG"):
            raise
        missing = _missing_package(err)
        if missing is not None:
            err_console.print(f"[red]error:[/red] {escape(missing)}", highlight=False, soft_wrap=True)
            sys.exit(2)
        machine = _machine_failure(err)
        if machine is not None:
            err_console.print(f"[red]failed:[/red] {escape(machine)}", highlight=False, soft_wrap=True)
            sys.exit(1)
        err_console.print(f"[red]failed:[/red] {type(err).__name__}: {escape(str(err))} (set LLMKIT_DEBUG=1 for the traceback)",
                          highlight=False, soft_wrap=True)
        sys.exit(1)


def _note_ctrl_c() -> list[bool]:
    """A list that holds True once Ctrl-C reached Python's default handler, which still raises KeyboardInterrupt.
    Commands with their own handling (training's checkpoint and its line) replace the handler and say their own."""
    import signal

    seen: list[bool] = []
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with Ctrl-C ignored

        def on_ctrl_c(signum, frame):
            seen.append(True)
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_ctrl_c)
    return seen


def _machine_failure(err: Exception) -> str | None:
    """One line for a full disk (an OSError, or a library's error text saying so, as safetensors' does), naming
    where and how much is free; None for anything else."""
    import errno
    import re
    import shutil

    from llmkit.workspace import resolve_workspace

    # numpy's tofile says only "85087 requested and 59443 written" when the disk fills under it
    full = (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err) \
        or (isinstance(err, OSError) and re.fullmatch(r"\d+ requested and \d+ written", str(err)) is not None)
    if not full:
        return None
    where = Path(getattr(err, "filename", None) or resolve_workspace(None))
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free / 2**20
    return (f"the disk is full writing under {where} ({free:,.1f} MiB free): free space, or move the workspace to a "
            "larger disk (--workspace or $LLMKIT_HOME); what was being written was not kept")


def usage_message(err: Exception) -> str | None:
    """One line for a click usage error: what is wrong and which --help lists the right usage.

    None when there is nothing to add (a command group called without a sub-command already showed its help).
    """
    message = " ".join(err.format_message().split()) if hasattr(err, "format_message") else str(err)
    if not message:
        return None
    message = message[0].lower() + message[1:].rstrip(".")
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        lists = "the commands" if getattr(ctx.command, "commands", None) else "the options and arguments"
        message += f" ({ctx.command_path} --help lists {lists})"
    return message


def _usage_error(err: Exception) -> int:
    message = usage_message(err)
    if message is not None:
        # Plain text, not rich markup: the message quotes what the user typed, which may hold '[...]'.
        print(f"error: {message}", file=sys.stderr)
    return 2


__all__ = ["app", "main", "console"]


# Import names that are not their distribution's name (the others are, with '_' for '-').
_DISTRIBUTIONS = {"sklearn": "scikit-learn", "llama_cpp": "llama-cpp-python", "yaml": "pyyaml"}


def _missing_package(err: Exception) -> str | None:
    """One line for a package the command needs that is not installed: which, and the extra that brings it (read from
    the installed llmkit's own requirements); None when `err` is something else."""
    import re
    from importlib import metadata

    if not isinstance(err, ModuleNotFoundError) or not err.name:
        return None
    module = err.name.split(".")[0]
    dist = _DISTRIBUTIONS.get(module, module.replace("_", "-")).lower()
    try:
        requirements = metadata.requires("llmkit") or []
    except metadata.PackageNotFoundError:  # run from a source tree without an install
        requirements = []
    extras = []
    for line in requirements:
        name = re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower().replace("_", "-")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", line)
        if name == dist and extra and extra.group(1) not in ("all", "dev"):
            extras.append(extra.group(1))
    if extras:
        how = f"pip install 'llmkit[{extras[0]}]'" + (f" (or [{'], ['.join(extras[1:])}])" if extras[1:] else "")
    elif dist == "llama-cpp-python":
        how = "make install builds it (portable: see the README's llama.cpp notes), or pip install llama-cpp-python"
    else:
        how = f"pip install {dist}"
    return f"this command needs the Python package '{dist}', which is not installed: {how}"
