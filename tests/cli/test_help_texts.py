"""What README.md tells a user to type is what `--help` lists.

Every `llmkit ...` line of the README (fenced blocks, usage blocks with their continuation lines, inline code spans)
is read as a command path and its flags; each flag must be one of that command's options. A flag named alone in the
prose (`--no-serve`) must be an option of some command, or of the bench script its paragraph names. Nothing here is
a list of flags: removing or renaming an option the README shows fails the test until the README says the new name.
The commands are the click objects typer builds, read in-process (no subprocess per command).
"""

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.config import RENAMED_SECTIONS, SECTIONS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
FLAG = re.compile(r"(?<![\w-])--[a-zA-Z][\w-]*")
ROOT_COMMAND = typer.main.get_command(app)


def _leaves(command, path=()):
    subs = getattr(command, "commands", None)
    if subs is None:
        yield path, command
        return
    for name, sub in subs.items():
        yield from _leaves(sub, (*path, name))


COMMANDS = dict(_leaves(ROOT_COMMAND))


def _options(command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *getattr(p, "secondary_opts", ())) if o.startswith("-")} | {"--help", "-h"}


def _readme_command_lines() -> list[tuple[int, str]]:
    """(line number, text after `llmkit`) for every command the README shows; a usage block's continuation lines
    (indented, starting with `[` or `(`) belong to the command above them."""
    lines = []
    for block in FENCE.finditer(README):
        first = README.count("\n", 0, block.start()) + 2
        current = None
        for n, raw in enumerate(block.group(1).replace("\\\n", "  ").splitlines()):
            text = re.sub(r"(?:^|\s)#.*$", "", raw).strip().removeprefix("$ ")
            text = re.sub(r"^torchrun .*?-m llmkit ", "llmkit ", text)
            if text.startswith("llmkit "):
                current = text.split(" [")[0].split(" --")[0]
                lines.append((first + n, text[len("llmkit "):]))
            elif current and raw[:1].isspace() and text[:1] in "[(-":
                lines.append((first + n, current[len("llmkit "):] + " " + text))
            else:
                current = None
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), README)
    for span in re.finditer(r"`([^`]+)`", prose):
        text = " ".join(span.group(1).split())
        if text.startswith("llmkit "):
            lines.append((prose.count("\n", 0, span.start()) + 1, text[len("llmkit "):]))
    return lines


def _resolve(words: list[str]) -> tuple[list[tuple[str, ...]], list[str]]:
    """The command paths the words name (`train dpo|orpo|kto` names three) and the words after them."""
    paths, rest = [()], list(words)
    while rest and all(getattr(_node(p), "commands", None) for p in paths):
        names = rest[0].split("|")
        if not all(name in _node(paths[0]).commands for name in names):
            break
        paths = [(*p, name) for p in paths for name in names]
        rest = rest[1:]
    return paths, rest


def _node(path: tuple[str, ...]):
    command = ROOT_COMMAND
    for name in path:
        command = command.commands[name]
    return command


README_COMMANDS = _readme_command_lines()


def test_the_readme_shows_commands():
    assert len(README_COMMANDS) > 50  # the extraction itself works (a broken regex would pass everything below)


@pytest.mark.parametrize("line,text", README_COMMANDS, ids=[f"README:{n}" for n, _ in README_COMMANDS])
def test_every_flag_of_a_readme_command_is_in_its_help(line, text):
    paths, rest = _resolve(text.split())
    for path in paths:
        assert path in COMMANDS, f"README.md:{line}: 'llmkit {text}' names no command (llmkit --help lists them)"
        missing = sorted(set(FLAG.findall(" ".join(rest))) - _options(COMMANDS[path]))
        assert not missing, f"README.md:{line}: llmkit {' '.join(path)} --help has no {', '.join(missing)}"


def _prose_flags() -> list[tuple[int, str, str]]:
    """(line, flag, its paragraph) for flags written in an inline code span of their own, such as `--no-serve`."""
    found = []
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), README)
    for paragraph in re.finditer(r"(?:[^\n]+\n?)+", prose):
        for span in re.finditer(r"`(--[a-zA-Z][\w-]*)[^`]*`", paragraph.group(0)):
            line = prose.count("\n", 0, paragraph.start() + span.start()) + 1
            found.append((line, span.group(1), paragraph.group(0)))
    return found


def test_every_flag_the_readme_names_alone_is_an_option():
    every = set().union(*(_options(c) for c in COMMANDS.values()))
    wrong = []
    for line, flag, paragraph in _prose_flags():
        if flag in every:
            continue
        scripts = re.findall(r"bench/\w+\.py", paragraph)  # a benchmark script's own flags
        if any(flag in (ROOT / s).read_text(encoding="utf-8") for s in scripts if (ROOT / s).exists()):
            continue
        wrong.append(f"README.md:{line}: {flag}")
    assert not wrong, "flags no command (nor the bench script named beside them) has: " + "; ".join(wrong)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=lambda p: " ".join(p))
def test_every_command_has_help_with_an_example(path):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output, f"llmkit {' '.join(path)} --help shows no example (the README promises one)"


def test_config_show_names_every_section_and_old_name():
    stage = next(p for p in COMMANDS[("config", "show")].params if p.name == "stage")
    named = set(re.findall(r"[a-z][a-z-]*", stage.help))
    assert set(SECTIONS) <= named, f"config show STAGE help lacks {sorted(set(SECTIONS) - named)}"
    assert set(RENAMED_SECTIONS) <= named, f"config show STAGE help lacks old names {sorted(set(RENAMED_SECTIONS) - named)}"
