"""What every command shares: the common options, the workspace and registry, and output."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from llmkit.config import load_section, read_config_file
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace, is_workspace, resolve_workspace


def _console(stderr: bool = False) -> Console:
    # Lines are never broken by rich (a path cut across two lines is no longer a path; a terminal wraps them on
    # screen). Piped into a file or another program there is no terminal width to fit: tables get 200 columns
    # (at rich's default of 80, `ls` cut every name to 'shakespe…') unless $COLUMNS says otherwise.
    stream = sys.stderr if stderr else sys.stdout
    piped = not (hasattr(stream, "isatty") and stream.isatty()) and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, soft_wrap=True, width=200 if piped else None)


console = _console()
err_console = _console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file; flags override it.", show_default=False)]
WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", "-w", help="Workspace folder (default: $LLMKIT_HOME or ./llmkit-workspace).", show_default=False)]
DbUrlOpt = Annotated[str | None, typer.Option("--db-url", help="Registry SQLAlchemy URL (default: $LLMKIT_DB_URL or SQLite in the workspace).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout; logs go to stderr.")]


@dataclass
class Ctx:
    """The resolved common options of one command invocation."""

    config: Path | None = None
    workspace: Path | None = None
    db_url: str | None = None
    json: bool = False
    given: dict[str, Any] = field(default_factory=dict)  # the section keys set by flags, as nested dicts
    _ws: Workspace | None = field(default=None, repr=False)
    _registry: Registry | None = field(default=None, repr=False)

    def section(self, section_name: str, /, **overrides: Any) -> Any:
        return load_section(section_name, self.config, overrides)

    @property
    def ws(self) -> Workspace:
        if self._ws is None:
            self._ws = Workspace.open(self.workspace)
        return self._ws

    def _db_url(self) -> str | None:
        if self.db_url is None and self.config is not None:
            return read_config_file(self.config).get("workspace", {}).get("db_url")
        return self.db_url

    def missing_workspace(self) -> Path | None:
        """The workspace folder when it does not exist and no --db-url names a registry elsewhere, else None.

        Commands that only read (ls, show, rm) ask this first: opening the workspace would create it, so a
        mistyped --workspace left an empty workspace behind and listed "nothing registered yet"."""
        root = resolve_workspace(self.workspace)
        # $LLMKIT_DB_URL names a registry elsewhere too: with it, ls read "nothing registered" (exit 0) from a team
        # database that was down, where --db-url said so
        elsewhere = self._db_url() is not None or bool(os.environ.get("LLMKIT_DB_URL"))
        return root if not elsewhere and not is_workspace(root) else None

    def require_workspace(self) -> None:
        """A UserError naming the folder when `missing_workspace` says there is none (show, rm)."""
        root = self.missing_workspace()
        if root is not None:
            raise UserError(f"no workspace at {root}: check --workspace (or $LLMKIT_HOME), or make one with "
                            "llmkit init")

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            # a registry elsewhere needs only the workspace's path: reading it (ls, show) makes no folder
            elsewhere = self._db_url() or os.environ.get("LLMKIT_DB_URL")
            root = resolve_workspace(self.workspace) if elsewhere and self._ws is None else self.ws.root
            self._registry = Registry.for_workspace(root, self._db_url())
        return self._registry

    @property
    def log(self) -> Console:
        # With --json, stdout is reserved for the result.
        return err_console if self.json else console

    def emit(self, result: Any, human=None) -> None:
        if self.json:
            print(json.dumps(result, indent=2, default=str, ensure_ascii=False))
        elif human is not None:
            human()
        else:
            console.print_json(data=result, default=str)


def valid_text(text: str, where: str) -> str:
    """`text` when it is valid Unicode; else a UserError naming `where` (a flag, an argument, a file line).

    A shell's $'\\ud800' reaches Python as bytes that are not UTF-8 (kept as lone surrogates by the
    surrogateescape decoding of argv and stdin), and a JSON file may hold an escaped lone surrogate:
    either would fail later inside the tokenizer with a TypeError, so the CLI refuses it at the edge."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise UserError(f"{where} contains an unpaired surrogate or bytes that are not UTF-8 "
                        f"(\\u{ord(text[err.start]):04x} at character {err.start}); pass valid UTF-8 text") from None
    return text


def check_writable_file(path: str, flag: str, example: str) -> None:
    """A file the command writes at its end, checked at its start: a folder or a place that cannot be written is the
    user's mistake, said in one line before the work (it was an IsADirectoryError after it)."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file path, such as {target / example}")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:  # folders that do not exist yet are made
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a folder; give a path in a folder")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: {parent} cannot be written by this user; give a path in a folder you can write")


def read_stdin_text(where: str) -> str:
    """All of stdin as text, checked like an argument (undecodable bytes become a UserError, not a crash)."""
    return valid_text(sys.stdin.buffer.read().decode("utf-8", errors="surrogateescape"), where)


def confirm(yes: bool, question: str, command: str = "rm") -> None:
    """Ask before removing something, unless --yes; with nobody to answer (a script, CI), one line saying --yes."""
    if yes:
        return
    try:
        confirmed = typer.confirm(question, err=True)
    except typer.Abort:  # end of input
        if sys.stdin.isatty():
            raise
        raise UserError(f"{command} asks before it acts ({question}) and got no answer on stdin: pass --yes") from None
    if not confirmed:
        raise typer.Abort()
