"""`make mutants` breaks src/ on purpose (tests/mutant_list.py): each breakage must still apply to the code as it is
now and name tests that exist, or the run it stands for checks nothing (one pointed at a file its code had left)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.mutant_list import MUTANTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_applies_once_and_names_tests_that_exist(mutant):
    source = (ROOT / mutant.file).read_text(encoding="utf-8")
    assert source.count(mutant.old) == 1, f"{mutant.name}: its text occurs {source.count(mutant.old)} times in {mutant.file}"
    assert mutant.tests
    for test in mutant.tests:
        file, _, name = test.partition("::")
        assert (ROOT / file).is_file(), f"{mutant.name}: no test file {file}"
        if name:
            function = re.sub(r"\[.*\]$", "", name)
            assert re.search(rf"def {re.escape(function)}\b", (ROOT / file).read_text(encoding="utf-8")), \
                f"{mutant.name}: no test {name} in {file}"
