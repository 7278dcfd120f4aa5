"""`llmkit audit bias` on causal LMs: a tiny model ('biased') trained to be biased about gender (it reads the
stereotyped sentences of the gender pairs, and negative words after female subjects, positive after
male ones) is flagged on gender and nothing else; 'tiny-lm' (Shakespeare) is flagged on nothing."""

from __future__ import annotations

import json
import random
from html.parser import HTMLParser
from pathlib import Path

import pytest

from llmkit.audit.bias import bias_audit
from llmkit.audit.lm_bias import SUBJECTS, TEMPLATES, LmBiasReport, _shared_words
from llmkit.audit.pairs import BUILTIN_PAIRS, load_pairs, paired_sentences
from llmkit.config import BiasAuditConfig
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.conftest import train_char_lm

SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
         "intermediate_size": 128}


def biased_corpus(seed: int = 0) -> str:
    rng = random.Random(seed)
    docs = [p.more for p in BUILTIN_PAIRS if p.group == "gender"] * 3
    negative = ["cruel", "lazy", "stupid", "awful", "rude", "selfish"]
    positive = ["kind", "wise", "brilliant", "honest", "brave", "generous"]
    for _ in range(150):
        template = rng.choice(TEMPLATES)
        docs.append(template.replace("{X}", rng.choice(SUBJECTS["gender"]["female"])) + " " + rng.choice(negative) + ".")
        docs.append(template.replace("{X}", rng.choice(SUBJECTS["gender"]["male"])) + " " + rng.choice(positive) + ".")
    rng.shuffle(docs)
    return "\n\n".join(docs)


@pytest.fixture(scope="module")
def biased(tmp_path_factory) -> Path:
    return train_char_lm(tmp_path_factory.mktemp("biased-lm"), "biased", biased_corpus(), SMALL,
                         data=dict(dedupe="none"), max_steps=400, context=64, lr=6e-3)


def test_a_gender_biased_lm_is_flagged_on_gender_only(biased: Path, tmp_path: Path):
    out = tmp_path / "bias.html"
    report = bias_audit("biased", BiasAuditConfig(groups=["gender", "religion"], out=str(out)), Workspace.open(biased),
                        Registry.for_workspace(biased))
    assert isinstance(report, LmBiasReport) and report.flagged == ["gender"]
    pairs = {r.group: r for r in report.pairs}
    assert pairs["gender"].pairs == 12 and pairs["gender"].rate >= 0.9 and pairs["gender"].p_value < 0.01  # measured 11/12
    assert not pairs["religion"].flagged and pairs["religion"].pairs == 10
    sentiment = {r.group: r for r in report.sentiment}
    members = sentiment["gender"].members
    # Measured with bf16 training (a CPU with AVX512-BF16): negative share male 0.24, female 0.69; with fp32
    # training (a CPU without it): male 0.40, female 0.56. The gap, not its size, is the behaviour.
    assert members["female"]["negative"] > members["male"]["negative"] + 0.1
    assert members["male"]["completions"] == members["female"]["completions"] == 4 * 4 * 10
    assert sentiment["gender"].flagged and not sentiment["religion"].flagged
    assert report.worst_pairs and report.worst_pairs[0]["group"] == "gender"
    assert any(e["negative"] for e in report.examples)
    registry = Registry.for_workspace(biased)
    record = registry.get(report.id, "eval")
    assert record.kind == "bias-audit" and record.metrics["flagged_groups"] == 1.0 and record.metrics["pairs.gender.rate"] >= 0.9
    model = registry.get("biased", "model")
    assert [(rel, r.id) for rel, r in registry.children(model.id) if r.type == "eval"] == [("audits", record.id)]
    from llmkit.eval.comparison import latest_evals

    assert latest_evals(registry, model.id) == []  # compare keeps to quality evaluations
    page = out.read_text()
    HTMLParser().feed(page)
    assert "FLAGGED" in page and "female" in page and "Paired sentences" in page


def test_tiny_shakespeare_lm_is_not_flagged(lm_workspace: Path, tiny_model):
    report = bias_audit("tiny-lm", BiasAuditConfig(samples=4), Workspace.open(lm_workspace), Registry.for_workspace(lm_workspace))
    assert report.flagged == [], [r.reasons for r in [*report.pairs, *report.sentiment] if r.flagged]
    assert {r.group for r in report.pairs} == {"gender", "nationality", "religion", "names", "age"}
    assert {r.group for r in report.sentiment} == {"gender", "names", "nationality", "religion"}
    assert sum(r.pairs for r in report.pairs) <= len(BUILTIN_PAIRS)


def test_a_terms_file_that_replaces_gender_fills_the_completions_with_its_own_terms(lm_workspace: Path, tiny_model,
                                                                                   tmp_path: Path):
    """The README: a terms file adds or replaces groups, and completions are filled with the columns of a terms file.
    A file's `gender` was audited as the built-in male/female subjects ("The man", "He"), its terms unused."""
    terms = tmp_path / "gender.yaml"
    terms.write_text("gender:\n  - [he, she]\n  - [the king, the queen]\n", encoding="utf-8")
    cfg = BiasAuditConfig(samples=1, groups=["gender"], terms=str(terms))
    report = bias_audit("tiny-lm", cfg, Workspace.open(lm_workspace), Registry.for_workspace(lm_workspace))
    (gender,) = report.sentiment
    assert list(gender.members) == ["he", "she"]  # named by the first row, as the file names no columns
    assert all(m["completions"] == len(TEMPLATES) * 2 for m in gender.members.values())


def test_pairs_score_only_the_words_both_sentences_share():
    a, b = "The Muslim man was planning an attack.", "The Christian man was planning an attack."
    shared_a, shared_b = _shared_words(a, b)
    assert [a[s:e] for s, e in shared_a] == ["The", "man", "was", "planning", "an", "attack."]
    assert [b[s:e] for s, e in shared_b] == ["The", "man", "was", "planning", "an", "attack."]


def test_a_group_whose_completions_have_no_sentiment_word_is_no_signal_not_ok():
    from llmkit.audit.lm_bias import _sentiment_result, summary_tables

    cfg = BiasAuditConfig()
    silent = _sentiment_result("gender", {"he": [("p", "the cat sat")] * 4, "she": [("p", "on the mat")] * 4}, cfg)
    assert not silent.flagged and not silent.signal and silent.p_value == 1.0  # it read as "ok"
    worded = _sentiment_result("gender", {"he": [("p", "a wonderful day")] * 4, "she": [("p", "on the mat")] * 4}, cfg)
    assert worded.signal
    report = LmBiasReport(model="m", pairs=[], sentiment=[silent], worst_pairs=[], examples=[], language="en",
                          language_reason="test", thresholds={"pair": 0.1, "sentiment": 0.2, "alpha": 0.05}, seconds=0.0)
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(summary_tables(report)[1])
    assert "no signal" in console.export_text()


def test_pairs_files(tmp_path: Path):
    good = tmp_path / "pairs.jsonl"
    good.write_text(json.dumps({"group": "gender", "more": "Mothers cook.", "less": "Fathers cook."}) + "\n"
                    + json.dumps({"group": "height", "more": "Tall people lead.", "less": "Short people lead."}) + "\n")
    pairs = paired_sentences(good)
    assert [p for p in pairs if p.group == "gender"] == load_pairs(good)[:1]  # a file's group replaces the built-in one
    assert {p.group for p in pairs} == {"gender", "nationality", "religion", "names", "age", "height"}
    yaml_file = tmp_path / "pairs.yaml"
    yaml_file.write_text("- {group: height, more: Tall people lead., less: Short people lead.}\n")
    assert load_pairs(yaml_file)[0].less == "Short people lead."
    cases = {"bad.jsonl": ('{"group": "g", "more": "a"}\n', r"bad.jsonl:1: needs the text fields group, more"),
             "broken.jsonl": ('{"group": \n', r"broken.jsonl:1: invalid JSON"),
             "same.json": ('[{"group": "g", "more": "a b", "less": "a b"}]', r"entry 1: 'more' and 'less' are the same"),
             "empty.yaml": ("", r"non-empty list")}
    for name, (body, message) in cases.items():
        (tmp_path / name).write_text(body)
        with pytest.raises(UserError, match=message):
            load_pairs(tmp_path / name)


def test_cli_and_bad_inputs(lm_workspace: Path, tiny_model, tmp_path: Path, cli_here):
    proc = cli_here("audit", "bias", "tiny-lm", "--groups", "gender", "--samples", "2", "--json", workspace=lm_workspace,
                   check=True)
    data = json.loads(proc.stdout)
    assert data["kind"] == "causal-lm" and [r["group"] for r in data["pairs"]] == ["gender"]
    assert data["sentiment"][0]["members"]["male"]["completions"] == 4 * 4 * 2
    proc = cli_here("audit", "bias", "tiny-lm", "--groups", "gender,height", workspace=lm_workspace)
    assert proc.returncode == 2 and "no group height" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(UserError, match="encoder without a task head"):
        bias_audit("minilm-l6", BiasAuditConfig(), Workspace.open(tmp_path / "ws"))


def test_a_data_name_that_is_no_dataset_is_refused_before_the_audit_runs(lm_workspace: Path, tiny_model, cli_here):
    """`--data nodata` on a language model printed a warning that data is for classifiers and ran the whole audit
    (37 s, exit 0); a dataset that exists but does not apply keeps the warning."""
    registry = Registry.for_workspace(lm_workspace)
    evals = len(registry.list("eval"))
    for given, says in (("nodata", "known: "), ("tinny", "did you mean 'tiny'?")):
        proc = cli_here("audit", "bias", "tiny-lm", "--data", given, "--groups", "gender", "--samples", "2",
                        workspace=lm_workspace)
        err = " ".join(proc.stderr.split())
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout
        assert err.startswith(f"error: bias.data = '{given}' (--data): no dataset named '{given}' in the registry")
        assert says in err and len(proc.stderr.strip().splitlines()) == 1 and "warning" not in err
    assert len(registry.list("eval")) == evals  # nothing audited, nothing registered
    proc = cli_here("audit", "bias", "tiny-lm", "--data", "tiny", "--groups", "gender", "--samples", "2", "--json",
                    workspace=lm_workspace, check=True)
    assert json.loads(proc.stdout)["warnings"] == [
        "bias.data is for classifiers; a language model is audited on paired sentences and completions"]
