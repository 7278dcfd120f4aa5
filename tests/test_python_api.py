"""The Python API as the README writes it: `import llmkit` reaches every stage, `from llmkit.config import *` gives
every section, a registered name resolves without passing a registry, and one stage's result goes to the next."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.config import EvalConfig, ExplainConfig
from llmkit.models.io import resolve_model


def test_a_plain_import_reaches_every_stage():
    import llmkit

    # the README's own spellings (they were AttributeErrors: llmkit/__init__ imported nothing)
    assert callable(llmkit.data.prepare) and callable(llmkit.train.pretrain) and callable(llmkit.eval.evaluate)
    assert callable(llmkit.explain.explain) and callable(llmkit.serve.start) and callable(llmkit.audit.bias_audit)
    assert callable(llmkit.optimize.quantize.quantize) and callable(llmkit.tune.tune)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        llmkit.nope  # noqa: B018


def test_star_import_of_the_config_gives_every_section():
    names: dict = {}
    exec("from llmkit.config import *", names)
    assert {"DataConfig", "PretrainConfig", "SftConfig", "ClassifyConfig", "EvalConfig", "QuantizeConfig", "ExplainConfig",
            "DpoConfig", "GrpoConfig", "TuneConfig"} <= set(names)


def test_names_resolve_in_the_workspace_and_a_stage_result_is_a_model(lm_workspace: Path, tiny_model, monkeypatch):
    from llmkit.eval import evaluate
    from llmkit.explain import explain

    monkeypatch.setenv("LLMKIT_HOME", str(lm_workspace))
    assert resolve_model(tiny_model) is tiny_model  # what pretrain() returned: a TypeError before
    report = evaluate(tiny_model, EvalConfig(data="tiny", split="val", context=32, max_examples=4))
    assert report.metrics["perplexity"] > 1
    # no registry given: the workspace's, as every other stage opens it (it said "no model 'tiny-lm'")
    exp = explain("tiny-lm", "ROMEO: what", ExplainConfig(method="occlusion", aopc_seeds=1))
    assert exp.tokens and len(exp.scores) == len(exp.tokens)
