"""The general-ability check shipped with llmkit: its data, the answer matching, and its figures on the real SmolLM2."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from llmkit.eval.general import answered, general_check, general_instructions, general_text


@pytest.mark.parametrize(("prediction", "answers", "right"), [
    ("The capital of France is Paris.", ["Paris"], True),
    ("PARIS", ["Paris"], True),
    ("A Parisian café.", ["Paris"], False),  # whole words only
    ("It freezes at 0 degrees.", ["0", "zero"], True),
    ("The freezing point of water is -18.0°C.", ["0", "zero"], False),  # not a digit inside another number
    ("A week has 7 days.", ["7", "seven"], True),
    ("About 7.5 days.", ["7", "seven"], False),
    ("Seven.", ["7", "seven"], True),
    ("Plants take in carbon dioxide.", ["carbon dioxide", "CO2"], True),
])
def test_an_answer_counts_when_it_contains_an_accepted_one_as_whole_words(prediction, answers, right):
    assert answered(prediction, answers) is right


def test_the_check_ships_as_package_data(repo_root: Path):
    text = general_text()
    assert 3000 <= sum(len(p) for p in text) <= 6000 and len(text) >= 8
    items = general_instructions()
    assert 20 <= len(items) <= 30 and all(i["instruction"].strip() and i["answers"] for i in items)
    package_data = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["llmkit"]
    assert "eval/general/*" in package_data  # else a wheel would ship without it


def test_the_real_model_reads_english_and_answers_most_instructions(smollm2):
    from llmkit.models.io import load_causal_lm

    lm, tok = load_causal_lm(smollm2)
    result = general_check(lm, tok)
    assert 5 < result["perplexity"] < 60 and 0.5 < result["bits_per_byte"] < 1.5
    assert result["answered"] >= 0.5
    by_question = {i["instruction"]: i for i in result["items"]}
    assert by_question["What is the capital of France?"]["correct"]
    assert "Paris" in by_question["What is the capital of France?"]["prediction"]
    assert result["answered"] == sum(i["correct"] for i in result["items"]) / len(result["items"])
