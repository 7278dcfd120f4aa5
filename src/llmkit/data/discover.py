"""Which files of the given inputs `prepare` reads: folders walked, globs expanded, files chosen.

A data folder usually carries its licence and readme next to the data (chinese_poetry ships
`LICENSE.upstream.txt` and `README.md`); read as training text they would become a "poem" each. So
files found by walking a folder or by a glob are skipped when their name is a licence, notice, readme
or changelog name, and `--include GLOB` / `--exclude GLOB` choose files explicitly. A file named
directly as an input is always read: naming it is choosing it. Every file left out is recorded with
the reason, so the report can say what was not read and why.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from llmkit.errors import UserError

# .md is text as it is written (a folder of notes or docs is text to train on; its headings and links stay)
FORMATS = {".txt": "txt", ".md": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
SUPPORTED = ".txt .md .jsonl .json .csv .tsv .parquet (each optionally .gz)"
# Name prefixes (case-insensitive, any extension) of files that describe a data set rather than hold it.
DEFAULT_SKIP = (
    ("licence file", ("license", "licence", "copying")),
    ("notice file", ("notice",)),
    ("readme file", ("readme",)),
    ("changelog file", ("changelog",)),
)
UNSUPPORTED = "unsupported file type"
OUTSIDE = "link outside the folder"
_GLOB = re.compile(r"[*?[]")


def file_format(path: Path) -> str | None:
    """The reader for a file name (`a.jsonl.gz` → jsonl), or None when unsupported."""
    name = path.name.lower().removesuffix(".gz")
    return FORMATS.get(Path(name).suffix)


def default_skip_reason(name: str) -> str | None:
    """Why a file of this name is skipped unless included, or None when it is data."""
    low = name.lower()
    return next((reason for reason, prefixes in DEFAULT_SKIP if low.startswith(prefixes)), None)


@dataclass(frozen=True)
class FileFilter:
    """--include / --exclude globs, matched against a file's name and its path below the input folder.

    Exclude wins over include; include overrides the default skip of licence and readme files; with
    any include given, files that match none are left out.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def reason(self, path: Path, rel: str) -> str | None:
        """Why `path` (found by a walk or a glob) is not read, or None to read it."""
        hit = _matching(self.exclude, path.name, rel)
        if hit:
            return f"excluded by --exclude {hit}"
        if self.include:
            if not _matching(self.include, path.name, rel):
                return "not matched by --include"
        else:
            why = default_skip_reason(path.name)
            if why:
                return why
        return None if file_format(path) else UNSUPPORTED


def _matching(globs: Iterable[str], name: str, rel: str) -> str | None:
    return next((g for g in globs if fnmatchcase(name, g) or fnmatchcase(rel, g)), None)


def expand_inputs(inputs: list[str], include: Iterable[str] = (), exclude: Iterable[str] = (),
                  skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """Files, folders (recursive) and globs to a sorted, de-duplicated list of files to read.

    `skipped`, when given, receives (path, reason) for every file a folder or glob held that is not read.
    """
    if not inputs:
        raise UserError("no inputs given; pass files, folders or globs", param="data.inputs")
    rule = FileFilter(tuple(include), tuple(exclude))
    log: list[tuple[str, str]] = []
    found: dict[Path, Path] = {}
    for item in inputs:
        for path in _expand_one(str(item), rule, log):
            found.setdefault(path.resolve(), path)  # the same file twice would double its records
    if skipped is not None:
        read = set(found)
        seen: set[str] = set()
        for path, why in log:  # a file skipped by one input but read through another was read
            if path not in seen and Path(path).resolve() not in read:
                seen.add(path)
                skipped.append((path, why))
    return list(found.values())


def _expand_one(item: str, rule: FileFilter, log: list[tuple[str, str]]) -> list[Path]:
    path = Path(item).expanduser()
    if _GLOB.search(item) and not path.exists():  # a file or folder named 'my[data].txt' is itself, not a pattern
        matches = sorted(glob.glob(str(path), recursive=True))
        files: list[Path] = []
        before = len(log)
        for match in map(Path, matches):
            if match.is_dir():
                files.extend(_walk(match, rule, log))
            elif match.is_file():
                files.extend(_chosen([match], match.parent, rule, log, _glob_root(path)))
        if not files:
            why = f"matches no {SUPPORTED} files" if matches else "matches nothing"
            raise UserError(f"{item}: the pattern {why}; check the path{_skipped_note(log[before:])}",
                            param="data.inputs")
        return files
    if path.is_dir():
        before = len(log)
        files = _walk(path, rule, log)
        if not files:
            chosen = any(why.startswith(("excluded", "not matched")) for _, why in log[before:])
            # "holds no .jsonl files" was false of a folder full of them that the globs left out
            what = f"no {SUPPORTED} file of the folder is left by the globs" if chosen else \
                f"the folder holds no {SUPPORTED} files"
            raise UserError(f"{item}: {what}{_skipped_note(log[before:])}", param="data.inputs")
        return files
    if path.is_file():
        if file_format(path) is None:
            raise UserError(f"{item}: unsupported file type; supported: {SUPPORTED}", param="data.inputs")
        return [path]
    raise UserError(f"{item}: no such file or folder", param="data.inputs")


def _walk(folder: Path, rule: FileFilter, log: list[tuple[str, str]]) -> list[Path]:
    # Hidden entries (.git, .cache) are tool state, not data: left out without a word.
    visible = sorted(p for p in folder.rglob("*")
                     if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return _chosen(visible, folder, rule, log, folder)


def _glob_root(pattern: Path) -> Path:
    """The folder a glob searches: its path up to the first part holding a wildcard."""
    parts = []
    for part in pattern.parts:
        if _GLOB.search(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _outside(path: Path, root: Path) -> bool:
    """A symbolic link (the file or a folder on its way) that leads out of `root`: a link to /etc/passwd
    dropped into a data folder must not turn the system's files into training records."""
    return not path.resolve().is_relative_to(root.resolve())


def _chosen(paths: list[Path], root: Path, rule: FileFilter, log: list[tuple[str, str]],
            within: Path) -> list[Path]:
    out = []
    for path in paths:
        why = OUTSIDE if _outside(path, within) else rule.reason(path, path.relative_to(root).as_posix())
        if why is None:
            out.append(path)
        else:
            log.append((str(path), why))
    return out


def _skipped_note(log: list[tuple[str, str]]) -> str:
    """What an input that yields no file left out on purpose, for its error message."""
    named = [(p, why) for p, why in log if why != UNSUPPORTED]
    chosen = any(why.startswith(("excluded", "not matched")) for _, why in named)
    hint = "check the --include/--exclude globs" if chosen else "choose files with --include GLOB"
    if all(why == OUTSIDE for _, why in named):
        hint = "name a linked file itself as an input to read it"
    return f" (skipped {describe_skipped(named, 3)}; {hint})" if named else ""


def describe_skipped(skipped: list[tuple[str, str]], limit: int = 5) -> str:
    """'2 files: LICENSE.upstream.txt (licence file), README.md (readme file)' for reports."""
    shown = ", ".join(f"{Path(p).name} ({why})" for p, why in skipped[:limit])
    more = f", and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"{len(skipped)} file{'s' if len(skipped) != 1 else ''}: {shown}{more}"
