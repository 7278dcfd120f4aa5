"""A command whose optional package is not installed says which package and which extra brings it, in one line with
exit 2 (it was `failed: ModuleNotFoundError: No module named 'fastapi'`, exit 1)."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

from llmkit.cli import _missing_package


def test_a_missing_package_names_its_extra_in_one_line(tmp_path):
    # The real CLI in a process where fastapi cannot be imported (None in sys.modules: what an absent package raises).
    code = ("import sys; sys.modules['fastapi'] = None\n"
            "from llmkit.cli import main\n"
            "sys.argv = ['llmkit', 'serve', 'smollm2-135m', '--port', '0']\nmain()")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert lines == ["error: this command needs the Python package 'fastapi', which is not installed: "
                     "pip install 'llmkit[serve]'"], run.stderr


def test_every_extras_package_is_named_with_its_extra():
    # Each optional requirement's import names (from the installed distributions) lead to an extra that has it.
    imports: dict[str, list[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            imports.setdefault(dist.lower().replace("_", "-"), []).append(module)
    checked = 0
    for line in metadata.requires("llmkit") or []:
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", line)
        if not extra or extra.group(1) in ("all", "dev"):
            continue
        dist = re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower().replace("_", "-")
        for module in imports.get(dist, []):
            if module.startswith("_") or not module.isidentifier():
                continue
            said = _missing_package(ModuleNotFoundError(f"No module named '{module}'", name=module))
            assert said is not None and "llmkit[" in said, (dist, module, said)
            assert f"[{extra.group(1)}]" in said, (dist, module, said)
            checked += 1
    assert checked >= 15
    assert _missing_package(ModuleNotFoundError("x", name="llama_cpp")).endswith("pip install llama-cpp-python")
    assert _missing_package(ValueError("not a missing package")) is None
