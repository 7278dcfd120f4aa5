"""The built-in GRPO rewards on hand-written answers, their settings checked up front, user functions scored safely."""

from __future__ import annotations

import json

import pytest

from llmkit.config import GrpoConfig
from llmkit.errors import UserError
from llmkit.train.rewards import last_number, reference_answer, resolve_reward, score

RECORD = {"messages": [{"role": "user", "content": "Tom has 12 apples and buys 30 more. How many?"},
                       {"role": "assistant", "content": "12 + 30 = 42. The answer is 42."}]}


def test_number_reward_compares_the_last_numbers():
    reward = resolve_reward(GrpoConfig(reward="number"))
    assert reference_answer(RECORD).endswith("42.")
    assert reward("", "He has 42 apples.", RECORD) == 1.0
    assert reward("", "12 + 30 = 42, so 42.0", RECORD) == 1.0
    assert reward("", "42 ... no, 43", RECORD) == 0.0
    assert reward("", "many", RECORD) == 0.0
    assert reward("", "1,042", {"answer": 1042}) == 1.0
    assert last_number("-3.5 then 7") == 7.0 and last_number("x") is None


def test_json_regex_and_length_rewards(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}))
    reward = resolve_reward(GrpoConfig(reward="json", schema_file=str(schema)))
    assert reward("", '{"n": 3}', {}) == 1.0
    assert reward("", 'Sure:\n```json\n{"n": 3}\n```', {}) == 1.0
    assert reward("", '{"n": "three"}', {}) == 0.5
    assert reward("", "n is 3", {}) == 0.0
    regex = resolve_reward(GrpoConfig(reward="regex", pattern=r"^In short: .+\n\n"))
    assert regex("", "In short: yes.\n\nBecause.", {}) == 1.0 and regex("", "Because.", {}) == 0.0
    length = resolve_reward(GrpoConfig(reward="length", min_chars=3, max_chars=5))
    assert [length("", "x" * n, {}) for n in (2, 3, 5, 6)] == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize(("cfg", "message"), [
    (dict(reward=None), "grpo.reward is not set"),
    (dict(reward="exact"), "'exact' is not a built-in reward"),
    (dict(reward="regex"), "needs --pattern"),
    (dict(reward="regex", pattern="(unclosed"), "is not a regular expression"),
    (dict(reward="length"), "needs --min-chars"),
    (dict(reward="length", min_chars=9, max_chars=3), "below grpo.min_chars"),
    (dict(reward="json"), "needs --schema-file"),
    (dict(reward="json", schema_file="/nonexistent/s.json"), "cannot read it"),
    (dict(reward="no_such_module_here:f"), "cannot import module 'no_such_module_here'"),
])
def test_bad_reward_settings_are_one_line(cfg, message):
    with pytest.raises(UserError, match=message):
        resolve_reward(GrpoConfig(**cfg))


def test_invalid_schema_names_where(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integr"}}}))
    with pytest.raises(UserError, match="not a valid JSON schema at properties/n/type"):
        resolve_reward(GrpoConfig(reward="json", schema_file=str(bad)))


def test_score_turns_raises_and_non_numbers_into_errors_naming_the_prompt():
    assert score(lambda p, c, r: 1, "p", "c", {}, "f") == 1.0
    with pytest.raises(UserError, match=r"reward 'f' raised ZeroDivisionError: division by zero \(prompt 'what is 1/0'\)"):
        score(lambda p, c, r: 1 / 0, "what is 1/0", "c", {}, "f")
    with pytest.raises(UserError, match=r"returned inf .*finite number"):
        score(lambda p, c, r: float("inf"), "p", "c", {}, "f")
    with pytest.raises(UserError, match=r"returned 'good', not a number"):
        score(lambda p, c, r: "good", "p", "c", {}, "f")
