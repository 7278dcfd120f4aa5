"""explain/report.py: the summary's faithfulness line says what the deletions did, whichever way they moved."""

from __future__ import annotations

from llmkit.explain import Explanation
from llmkit.explain.report import summary_lines


def _explanation(aopc: float, aopc_random: float, k: int = 5) -> Explanation:
    return Explanation(model="m", kind="causal-lm", method="ig", text="ROMEO", tokens=list("ROMEO"),
                       scores=[0.1] * 5, normalized=[1.0] * 5, special=[False] * 5, target=" and more",
                       quantity="log_probability", value=-9.0, probability=1.2e-4, aopc=aopc, aopc_random=aopc_random,
                       faithfulness={"k": k}, seconds=0.1, seconds_total=0.2)


def _faithfulness(exp: Explanation) -> str:
    return next(line for line in summary_lines(exp) if line.startswith("faithfulness"))


def test_deletions_that_raise_the_target_are_said_to_raise_it():
    line = _faithfulness(_explanation(-2.4179, -2.7619))
    assert "deleting the top 1-5 tokens raises the log p by 2.4179 on average" in line
    assert "deleting random ones raises it by 2.7619" in line
    assert "by -" not in line
    assert "0.3440 more than random, so the ranking is faithful" in line


def test_deletions_that_lower_it_and_an_unfaithful_ranking():
    line = _faithfulness(_explanation(0.10, 0.25))
    assert "lowers the log p by 0.1000 on average" in line and "lowers it by 0.2500" in line
    assert "no more than random, so do not trust this ranking" in line
    single = _faithfulness(_explanation(-0.5, 0.2, k=1))
    assert single == "faithfulness: deleting the top token raises the log p by 0.5000, a random one lowers it by 0.2000"
