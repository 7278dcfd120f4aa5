"""The workspace folder and atomic artifact writes.

Layout: <workspace>/registry.db (SQLite default), datasets/, runs/, models/, evals/.
Every artifact folder is written under a temporary name beside its target, fsynced, renamed into
place, and only then registered: a crash leaves either the old state or the new one, never half.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import UserError

TMP_PREFIX = ".tmp-"
KINDS = ("datasets", "runs", "models", "evals")


def resolve_workspace(workspace: str | Path | None) -> Path:
    """--workspace, else $LLMKIT_HOME, else ./llmkit-workspace."""
    chosen = workspace or os.environ.get("LLMKIT_HOME") or "llmkit-workspace"
    return Path(chosen).expanduser().resolve()


def is_workspace(root: Path) -> bool:
    """Whether `root` is a folder a workspace was made in (its registry or its kinds of folder). Reading commands
    (ls, show, gc) ask first: opening a folder as a workspace makes those folders, so `ls -w ~/Documents` turned
    a folder of someone's files into a workspace."""
    return root.is_dir() and ((root / "registry.db").exists() or any((root / kind).is_dir() for kind in KINDS))


@dataclass
class Workspace:
    root: Path

    @classmethod
    def open(cls, workspace: Workspace | str | Path | None = None, create: bool = True) -> Workspace:
        """The workspace `workspace` names (a folder; None: $LLMKIT_HOME, else ./llmkit-workspace): what every stage
        function's `ws` argument goes through, so a notebook may pass a Workspace, a str or a Path."""
        if isinstance(workspace, Workspace):
            return workspace
        if workspace is not None and not isinstance(workspace, str | os.PathLike):
            raise UserError(f"a workspace is a folder (str or Path) or a Workspace, not {type(workspace).__name__}")
        root = resolve_workspace(workspace)
        if root.exists() and not root.is_dir():
            raise UserError(f"workspace {root} is a file; pass --workspace with a folder")
        if not root.exists() and not create:
            raise UserError(f"no workspace at {root}; run 'llmkit init' or pass --workspace")
        for kind in KINDS:
            try:
                (root / kind).mkdir(parents=True, exist_ok=True)
            except OSError as err:  # a file where a parent folder should be, no permission, a read-only disk
                raise UserError(f"cannot make the workspace {root}: {err.strerror} ({err.filename}); pass --workspace "
                                "with a folder you can write") from None
        ws = cls(root)
        ws.clean_stale_tmp()
        return ws

    def folder(self, kind: str, name: str) -> Path:
        """`<root>/<kind>/<name>`, proven to stay inside `<root>/<kind>` once resolved (no '..', no
        absolute name, no symlink out): every folder llmkit writes comes from here."""
        if kind not in KINDS:
            raise ValueError(f"workspace kind {kind!r} not in {KINDS}")
        base = (self.root / kind).resolve()
        path = (base / name).resolve()
        if path.parent != base:
            raise UserError(f"'{name}' would write to {path}, outside the workspace's {kind}/ folder {base}; "
                            "names use ASCII letters, digits, '.', '_' and '-'")
        return path

    def new_folder(self, kind: str, stem: str, suffix: str = "") -> Path:
        """A folder name no record uses yet: `<stem>[-<suffix>]-<random>`, so each registered version has its own
        files (a second `quantize` of the same model must never replace, or later delete, the first one's). The
        suffix says what made it, once: a default name such as `nano-int8-weight` or `nano-magnitude-50` has it."""
        if suffix and f"-{suffix}-" not in f"{stem}-":
            stem = f"{stem}-{suffix}"
        while True:
            path = self.folder(kind, f"{stem}-{os.urandom(4).hex()}")
            if not path.exists():
                return path

    def clean_stale_tmp(self) -> list[Path]:
        """Remove temporary folders left by writers that died (their pid is gone)."""
        removed: list[Path] = []
        for kind in KINDS:
            removed += remove_stale_tmp(self.root / kind)
        return removed


def remove_stale_tmp(folder: Path) -> list[Path]:
    removed = []
    for tmp in Path(folder).glob(TMP_PREFIX + "*"):
        pid = _pid_of(tmp.name)
        if pid is not None and _alive(pid):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _pid_of(tmp_name: str) -> int | None:
    # .tmp-<pid>-<random>-<target name>
    try:
        return int(tmp_name[len(TMP_PREFIX):].split("-", 1)[0])
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success fsync it and rename it to `target`.

    On any exception the temporary folder is removed and `target` is left as it was.
    """
    target = Path(target)
    tmp = target.parent / f"{TMP_PREFIX}{os.getpid()}-{os.urandom(3).hex()}-{target.name}"
    make_folder(tmp, shown=target)
    try:
        yield tmp
        share_like_umask(tmp)
        fsync_tree(tmp)
        if target.exists():
            # Replace: move the old one aside first so the swap is two renames, never a half tree.
            old = target.parent / f"{TMP_PREFIX}{os.getpid()}-old-{target.name}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_folder(path: Path, shown: Path | None = None) -> None:
    """mkdir -p, with a folder that may not be written (a read-only disk or mount, another user's folder) said in one
    line naming it (`shown`: the folder the user knows of, not its temporary twin) and how to go on."""
    try:
        path.mkdir(parents=True)
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        where = Path(err.filename or path)
        while not where.exists() and where != where.parent:
            where = where.parent
        why = "is on a read-only file system" if err.errno == errno.EROFS else f"is not writable by this user (uid {os.getuid()})"
        raise UserError(f"cannot write {shown or path}: {where} {why}; make it writable (or remount it read-write), or pass "
                        "--workspace a folder you can write") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a single file atomically (temp file, fsync, rename)."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once, at import: os.umask can only be read by setting it, which is not thread-safe


def share_like_umask(root: Path) -> None:
    """Give files written private (safetensors' save_file writes 0600 through a temporary file) the mode any
    other file of the folder gets from the umask, so a model folder's weights are as readable as its config."""
    wanted = 0o666 & ~UMASK
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.stat(path).st_mode & 0o777 == 0o600 and wanted != 0o600:
                os.chmod(path, wanted)


def fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
