"""The faithfulness verdict says "faithful" only when deleting tokens moved the prediction at all.

An English classifier reading a Chinese review as [UNK] throughout barely moved: deleting the top tokens lowered p by
0.0001, random ones raised it by 0.0006, and the summary called that 0.0008 "more than random, so the ranking is
faithful". Here a real classifier whose head ignores its input (weights zeroed, bias kept) is the limit case: no
deletion moves p, so the verdict is no_effect and the summary says the prediction does not depend on the tokens.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from llmkit.config import ExplainConfig
from llmkit.explain import explain_loaded, load_for_explain
from llmkit.explain.faithfulness import verdict
from llmkit.explain.report import html_report, summary_lines
from llmkit.registry import Registry

REVIEW = "服务很好，非常满意！"
SPAM = "URGENT! You have won a 1 week FREE membership in our £100,000 Prize Jackpot! Txt CLAIM to 81010"


@pytest.fixture(scope="module")
def clf(lm_workspace: Path, sms_classifier):
    return load_for_explain("sms-clf", Registry.for_workspace(lm_workspace))


def _run(loaded, text: str, model=None, **cfg):
    base, tokenizer, kind, labels, max_length, ref = loaded
    return explain_loaded(model or base, tokenizer, kind, text, ExplainConfig(**cfg), labels=labels,
                          max_length=max_length, name=ref)


def test_a_prediction_no_token_moves_is_not_called_faithful(clf):
    deaf = copy.deepcopy(clf[0])
    with torch.no_grad():
        deaf.classifier.weight.zero_()
        deaf.classifier.bias.copy_(torch.tensor([0.3, -0.2]))
    exp = _run(clf, REVIEW, model=deaf, method="occlusion")
    assert exp.faithfulness["max_move"] < 1e-6 and exp.faithfulness["verdict"] == "no_effect"
    line = next(x for x in summary_lines(exp) if x.startswith("faithfulness"))
    assert "faithful" not in line.removeprefix("faithfulness") and "hardly depends on these tokens" in line
    assert "moves the p by 0.0000 at most, under 1 % of p" in line
    assert "hardly depends on these tokens" in html_report(exp)


def test_a_ranking_that_finds_what_matters_is_still_faithful(clf):
    exp = _run(clf, SPAM, method="occlusion")
    assert exp.faithfulness["verdict"] == "faithful" and exp.faithfulness["max_move"] > 0.01 * exp.value
    assert any("so the ranking is faithful" in x for x in summary_lines(exp))
    assert exp.to_dict()["faithfulness"]["verdict"] == "faithful"  # what POST /v1/explain and --json carry


def test_the_one_percent_is_of_p_for_probabilities_and_absolute_in_log_p():
    faith = {"aopc": 0.0009, "aopc_random": 0.0001, "k": 5, "max_move": 0.004}
    assert verdict(faith, "probability", 0.5) == "no_effect"      # 0.004 < 1 % of 0.5
    assert verdict(faith, "probability", 0.2) == "faithful"       # 0.004 >= 1 % of 0.2
    assert verdict(faith, "log_probability", -19.7) == "no_effect"  # 0.004 nats: p moved 0.4 %
    assert verdict({**faith, "max_move": 0.3}, "log_probability", -19.7) == "faithful"
    assert verdict({**faith, "aopc": 0.0, "max_move": 0.3}, "log_probability", -1.0) == "not_better"
