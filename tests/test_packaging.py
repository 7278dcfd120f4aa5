"""What `pip install llmkit` gets. `make test` runs on an editable install that reads src/ directly, so nothing else
notices a file the packaging leaves out. Here an sdist is built from a copy of the tree and a wheel from that sdist
(as `python -m build` and pip do), and the wheel must hold every file under src/llmkit, every data file the code
names beside its own modules, the `llmkit` command and `python -m llmkit`."""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "llmkit"
# A PEP 517 hook called directly: no build isolation (nothing downloaded) and no `wheel` or `build` package needed.
BUILD = "import sys; from setuptools import build_meta; getattr(build_meta, sys.argv[1])(sys.argv[2])"


def package_files() -> set[str]:
    """Every file under src/llmkit, named as in the wheel (llmkit/...). Python or not, each is there to be read."""
    return {p.relative_to(SRC).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")}


def _const(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _named(node: ast.AST, *names: str) -> bool:
    """`node` is one of `names`, bare or as the last attribute (Path, pathlib.Path; files, resources.files)."""
    return (isinstance(node, ast.Name) and node.id in names) or (isinstance(node, ast.Attribute) and node.attr in names)


def _path_of(node: ast.AST, module: Path) -> Path | None:
    """The path `node` names when it is built from the module's own location: Path(__file__) and os.path on __file__,
    .parent, .parents[N], .resolve(), / "name", .joinpath("a/b"), importlib.resources.files("pkg"). Else None."""
    if isinstance(node, ast.Name) and node.id == "__file__":
        return module
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and _const(node.right) is not None:
        base = _path_of(node.left, module)
        return None if base is None else base / _const(node.right)
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        base = _path_of(node.value, module)
        return None if base is None else base.parent
    if isinstance(node, ast.Subscript) and _named(node.value, "parents") and isinstance(node.slice, ast.Constant):
        base = _path_of(node.value.value, module)
        return None if base is None or node.slice.value >= len(base.parents) else base.parents[node.slice.value]
    if not isinstance(node, ast.Call):
        return None
    args = [_const(a) for a in node.args]
    if _named(node.func, "Path", "PurePath") and len(node.args) == 1:
        return _path_of(node.args[0], module)
    if _named(node.func, "resolve", "absolute") and isinstance(node.func, ast.Attribute) and not node.args:
        return _path_of(node.func.value, module)
    if _named(node.func, "dirname", "abspath", "realpath") and len(node.args) == 1:
        base = _path_of(node.args[0], module)
        return None if base is None else base.parent if _named(node.func, "dirname") else base
    if _named(node.func, "joinpath") and isinstance(node.func, ast.Attribute) and None not in args:
        base = _path_of(node.func.value, module)
        return None if base is None else base.joinpath(*args)
    if _named(node.func, "join") and node.args and None not in args[1:]:  # os.path.join(dirname(__file__), "a")
        base = _path_of(node.args[0], module)
        return None if base is None else base.joinpath(*args[1:])
    if _named(node.func, "files") and len(args) == 1:  # importlib.resources.files("llmkit.eval")
        if args[0] is not None:
            return SRC.joinpath(*args[0].split("."))
        if isinstance(node.args[0], ast.Name) and node.args[0].id in ("__package__", "__name__"):
            return module.parent
    return None


def data_references() -> dict[Path, str]:
    """Each file or folder a module of llmkit names relative to itself, with where it is named (module:line)."""
    found: dict[Path, str] = {}
    for module in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names_something = (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)) or \
                (isinstance(node, ast.Call) and _named(node.func, "joinpath", "join"))
            path = _path_of(node, module.resolve()) if names_something else None
            if path is not None:
                found.setdefault(path, f"{module.relative_to(REPO)}:{node.lineno}")
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The sdist and the wheel built from it: their file names, and the wheel's dist-info files."""
    tmp = tmp_path_factory.mktemp("packaging")
    tree = tmp / "tree"  # a copy: building in place would leave build/ and an egg-info in the repository
    tree.mkdir()
    for item in REPO.iterdir():
        if item.is_file():
            shutil.copy2(item, tree / item.name)
    shutil.copytree(SRC, tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))

    def build(hook: str, where: Path, out: Path) -> Path:
        out.mkdir()
        proc = subprocess.run([sys.executable, "-c", BUILD, hook, str(out)], cwd=where, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, f"{hook} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        (result,) = out.iterdir()
        return result

    sdist = build("build_sdist", tree, tmp / "sdist")
    with tarfile.open(sdist) as tar:
        sdist_names = tar.getnames()
        tar.extractall(tmp / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (tmp / "unpacked").iterdir()
    wheel = build("build_wheel", unpacked, tmp / "wheel")
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        info = {n.split("/", 1)[1]: whl.read(n).decode() for n in names if n.split("/")[0].endswith(".dist-info")}
        cli = whl.read("llmkit/cli/__init__.py").decode() if "llmkit/cli/__init__.py" in names else ""
    return {"sdist": sdist_names, "wheel": names, "info": info, "cli": cli}


def test_the_wheel_built_from_the_sdist_holds_every_file_under_src_llmkit(built):
    missing = sorted(package_files() - built["wheel"])
    assert not missing, (f"{len(missing)} file(s) under src/llmkit are not in the wheel, so an installed llmkit cannot "
                         f"read them: {missing[:10]}; add a pattern to [tool.setuptools.package-data] in pyproject.toml")
    top = {n.split("/")[0] for n in built["wheel"] if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"llmkit"}, f"the wheel installs {sorted(top)} into site-packages, not llmkit alone"


def test_every_data_file_the_code_names_beside_itself_is_in_the_package_and_the_wheel(built):
    refs = data_references()
    assert refs, "found no Path(__file__) or importlib.resources reference: the scan no longer sees how code finds data"
    for path, where in refs.items():
        assert path.is_relative_to(PACKAGE.resolve()), (
            f"{where} reads {path}, outside the package: an installed llmkit has no such file (ship it in src/llmkit, "
            "or look for it only in a source checkout)")
        assert path.exists(), f"{where} names {path}, which does not exist"
        name = path.relative_to(SRC.resolve()).as_posix()
        inside = [n for n in built["wheel"] if n == name or n.startswith(name + "/")]
        assert inside, f"{where} reads {name}, which the wheel does not hold"


def test_every_package_data_pattern_matches_a_file():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["llmkit"]
    dead = [p for p in patterns if not any(f.is_file() for f in PACKAGE.glob(p))]
    assert not dead, f"package-data pattern(s) {dead} match no file under src/llmkit: a file was moved or never added"


def test_the_wheel_installs_the_llmkit_command_and_python_m_llmkit(built):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(built["info"]["entry_points.txt"])
    assert entry_points["console_scripts"]["llmkit"] == "llmkit.cli:main"
    assert "llmkit/__main__.py" in built["wheel"]
    top = ast.parse(built["cli"]).body  # the wheel's own llmkit/cli/__init__.py defines what the command runs
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in top)
    from llmkit.cli import main

    assert callable(main)


def test_the_wheel_metadata_carries_the_package_version_readme_and_license(built):
    import llmkit

    metadata = built["info"]["METADATA"]
    headers = dict(line.split(": ", 1) for line in metadata.split("\n\n", 1)[0].splitlines() if ": " in line)
    assert headers["Version"] == llmkit.__version__
    assert headers["License-Expression"] == "Apache-2.0"
    # the licence's text travels with the package (PEP 639: dist-info/licenses/), as Apache-2.0 asks of copies
    assert headers.get("License-File") == "LICENSE" and "Apache License" in built["info"]["licenses/LICENSE"]
    assert headers["Description-Content-Type"] == "text/markdown" and "## Quick tour" in metadata


def test_the_sdist_leaves_out_the_tests_that_cannot_run_outside_the_repository(built):
    root = built["sdist"][0].split("/")[0]
    assert f"{root}/pyproject.toml" in built["sdist"] and f"{root}/src/llmkit/__init__.py" in built["sdist"]
    assert not [n for n in built["sdist"] if n.startswith(f"{root}/tests/")]  # MANIFEST.in: prune tests
