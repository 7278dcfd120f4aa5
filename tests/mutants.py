"""Mutation check: deliberate breakages of src/, each of which some test must catch.

Each mutant is one exact string replacement in one file of a *copy* of the tree (src/, tests/,
pyproject.toml, beside a `shared` link so the tests find ../shared/data). The tests named for it run
against the copy; a mutant whose tests all pass "survived" — the suite would not notice that bug.
The unmutated copy runs every named test first, so a test that fails anyway cannot count as a kill.

    .venv/bin/python tests/mutants.py              # every mutant (about 32 minutes on 2 cores)
    .venv/bin/python tests/mutants.py --list       # what is in the list
    .venv/bin/python tests/mutants.py --only wanda-ignores-activations --only skip-int8-conversion
    make mutants

Exit 0 when every mutant is killed; the last line is JSON with the counts per stage. Not part of
`make test` (slow); the list grows with each stage: add a mutant whenever a test is written to catch a
bug that a rewrite could bring back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


sys.path.insert(0, str(REPO))
from tests.mutant_list import MUTANTS, Mutant  # noqa: E402  (run as a script: the repo root is not on the path)


def make_copy(root: Path) -> Path:
    """A copy of the tree under root/llmkit, with root/shared pointing at the real shared folder."""
    (root / "shared").symlink_to(REPO.parent / "shared")
    tree = root / "llmkit"
    tree.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for part in ("src", "tests"):
        shutil.copytree(REPO / part, tree / part, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "README.zh-CN.md", "MANIFEST.in", "LICENSE"):  # what a build reads
        shutil.copy2(REPO / name, tree / name)
    return tree


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, float, str]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}", "PYTHONDONTWRITEBYTECODE": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        code, out = -1, f"timed out after {timeout:.0f} s"
    return code, time.perf_counter() - start, out


def check_imports_copy(tree: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}
    where = subprocess.run([sys.executable, "-c", "import llmkit; print(llmkit.__file__)"], env=env, cwd=tree,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not where.startswith(str(tree)):
        sys.exit(f"error: the copy imports llmkit from {where}, not from {tree}/src; the editable install wins over "
                 "PYTHONPATH here, so mutants would run against the real tree")


def apply(tree: Path, mutant: Mutant) -> str:
    """Mutates the copy; returns the original text so it can be put back."""
    path = tree / mutant.file
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise SystemExit(f"error: mutant {mutant.name!r}: its text occurs {count} times in {mutant.file} "
                         "(must be exactly once); update tests/mutant_list.py to the code as it is now")
    path.write_text(text.replace(mutant.old, mutant.new))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="run only this mutant (repeatable)")
    parser.add_argument("--stage", action="append", default=[], help="run only this stage's mutants (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    parser.add_argument("--verbose", action="store_true", help="print pytest's output for survivors")
    args = parser.parse_args()

    names = [m.name for m in MUTANTS]
    if len(set(names)) != len(names):
        sys.exit("error: tests/mutant_list.py has two mutants of one name")
    unknown = set(args.only) - set(names)
    if unknown:
        sys.exit(f"error: no mutant named {', '.join(sorted(unknown))}; see --list")
    chosen = [m for m in MUTANTS if (not args.only or m.name in args.only) and (not args.stage or m.stage in args.stage)]
    if args.list:
        for m in chosen:
            print(f"{m.stage:10} {m.name:40} {m.file}  [{len(m.tests)} tests]  {m.why}")
        return 0

    with tempfile.TemporaryDirectory(prefix="llmkit-mutants-") as tmp:
        tree = make_copy(Path(tmp))
        check_imports_copy(tree)
        for m in chosen:  # stale text is an error before anything slow runs
            apply(tree, m)
            (tree / m.file).write_text((REPO / m.file).read_text())

        baseline = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        print(f"baseline: {len(baseline)} tests on the unmutated copy ...", file=sys.stderr, flush=True)
        code, seconds, out = run_tests(tree, baseline, args.timeout * 2)
        if code != 0:
            print(out[-4000:], file=sys.stderr)
            sys.exit(f"error: the named tests fail without any mutant (exit {code}); fix them first")
        print(f"baseline passed in {seconds:.0f} s", file=sys.stderr)

        results = []
        for i, m in enumerate(chosen, 1):
            original = apply(tree, m)
            try:
                code, seconds, out = run_tests(tree, m.tests, args.timeout)
            finally:
                (tree / m.file).write_text(original)
            # pytest exit codes: 1 tests failed, 2 interrupted/collection error, 5 nothing collected
            verdict = "killed" if code in (1, 2, -1) else "survived" if code == 0 else f"error (exit {code})"
            results.append((m, verdict, seconds))
            print(f"[{i}/{len(chosen)}] {m.stage:10} {m.name:40} {verdict:9} {seconds:6.1f} s", flush=True)
            if verdict != "killed" and args.verbose:
                print(out[-3000:])

    per_stage: dict[str, Counter] = {}
    for m, verdict, _ in results:
        per_stage.setdefault(m.stage, Counter())["killed" if verdict == "killed" else "survived"] += 1
    print("\nstage       killed / mutants")
    for stage, counts in per_stage.items():
        print(f"{stage:10} {counts['killed']:4} / {counts['killed'] + counts['survived']}")
    survivors = [m.name for m, verdict, _ in results if verdict != "killed"]
    if survivors:
        print(f"survived: {', '.join(survivors)}")
    print(json.dumps({"mutants": len(results), "killed": len(results) - len(survivors), "survived": survivors,
                      "per_stage": {s: {"killed": c["killed"], "total": c["killed"] + c["survived"]}
                                    for s, c in per_stage.items()},
                      "seconds": round(sum(s for _, _, s in results), 1)}))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
