"""The promotion gate of `llmkit compare BASE TUNED --data NAME`: flips, checks and the verdict, on tiny real models
(one tuned to get better, one fine-tuned to get worse) and through the CLI's exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llmkit.config import CompareConfig, SftConfig
from llmkit.errors import UserError
from llmkit.eval.gate import checks, flips, gate, improvement_interval, sample_warnings
from llmkit.models.aliases import last_gate
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.conftest import tiny_config

FAST = dict(max_items=12, max_new_tokens=8)


def test_flips_are_outcome_changes_both_ways_and_each_threshold_is_a_check():
    cfg = CompareConfig(item_pass_score=0.5, item_loss_margin=0.1, max_regressed_share=0.25, max_regressed_items=0)
    base = [{"score": s} for s in (1.0, 1.0, 0.0, 0.0, 0.6)]
    tuned = [{"score": s} for s in (1.0, 0.0, 1.0, 0.0, 0.4)]
    assert flips("classify", base, tuned, cfg) == ([1, 4], [2])  # 0.6 -> 0.4: correct -> wrong at 0.5
    assert flips("chat", base, tuned, CompareConfig(item_pass_score=0.3)) == ([1], [2])  # 0.6 and 0.4 both pass 0.3
    losses = [{"loss": a} for a in (2.0, 2.0, 2.0)], [{"loss": b} for b in (2.05, 2.2, 1.8)]
    assert flips("lm", *losses, cfg) == ([1], [2])  # a move of 0.05 is inside the margin
    task = {"base": 0.6, "tuned": 0.55, "improvement": -0.05, "interval": [-0.2, 0.1]}
    found = {c["check"]: c for c in checks("classify", task, regressed=2, items=5, general=None, cfg=cfg)}
    assert [name for name, c in found.items() if not c["passed"]] == ["task", "regressed share", "regressed items"]
    assert found["task"]["message"] == ("accuracy 0.6000 -> 0.5500 (change -0.0500, 95 % interval [-0.2000, +0.1000]; "
                                         "compare.min_task_improvement = +0.0000)")
    assert found["regressed share"]["message"] == "2 of 5 items went from better to worse (40.0%; compare.max_regressed_share = 25.0%)"
    general = {"base": {"perplexity": 10.0, "answered": 0.8}, "tuned": {"perplexity": 10.4, "answered": 0.75},
               "perplexity_increase": 0.04, "answer_drop": 0.05}
    ok = checks("lm", {"base": 20.0, "tuned": 18.0, "improvement": 0.1, "interval": [0.05, 0.15]}, 0, 5, general, CompareConfig())
    assert all(c["passed"] for c in ok) and len(ok) == 4
    strict = checks("lm", {"base": 20.0, "tuned": 18.0, "improvement": 0.1, "interval": [0.05, 0.15]}, 0, 5, general,
                    CompareConfig(max_general_perplexity_increase=0.03, max_general_answer_drop=0.01))
    assert [c["check"] for c in strict if not c["passed"]] == ["general perplexity", "general answers"]


def test_the_improvement_has_a_paired_bootstrap_interval_and_few_items_are_warned_of():
    """The interval resamples the same items for both models: one item of 40 flipping leaves 0 inside it, 20 of
    40 do not; under 30 items the verdict says it rests on few."""
    base = [{"score": 0.0} for _ in range(40)]
    one = [{"score": 1.0}] + base[1:]
    low, high = improvement_interval("classify", base, one)
    assert low == 0.0 and 0.025 <= high <= 0.1
    many = [{"score": float(i % 2)} for i in range(40)]
    low, high = improvement_interval("classify", base, many)
    assert 0.3 < low < 0.5 < high < 0.7
    assert sample_warnings({"metric": "accuracy", "improvement": 0.5, "interval": [low, high]}, 40) == []
    assert sample_warnings({"metric": "accuracy", "improvement": 0.025, "interval": [0.0, 0.075]}, 40) == [
        "the accuracy change +0.0250 is within its 95 % interval [+0.0000, +0.0750] of no change over these 40 items"]
    assert sample_warnings({"metric": "accuracy", "improvement": 1.0, "interval": [1.0, 1.0]}, 1) == [
        "1 held-out item: a verdict on so few says little (score a larger split, or prepare more held-out data)"]
    # perplexity: the documents' tokens weigh their losses, as in the figure itself
    docs = [{"nll": 2.0 * n, "tokens": n} for n in (10, 20, 30)]
    better = [{"nll": 1.0 * d["tokens"], "tokens": d["tokens"]} for d in docs]
    low, high = improvement_interval("lm", docs, better)
    assert low == pytest.approx(1 - math.exp(-1.0)) == pytest.approx(high)


def test_the_perplexity_interval_holds_the_change_when_the_models_tokenize_differently():
    """Each model's loss is over its own tokens, as in the figure: a tuned model with another tokenizer (three
    tokens where the base has one) was divided by the base's count, its interval far from its own change."""
    from llmkit.eval.gate import task_figure

    base = [{"nll": 2.0 * n, "tokens": n} for n in (10, 20, 30, 40)]
    tuned = [{"nll": 1.5 * 3 * n, "tokens": 3 * n} for n in (10, 20, 30, 40)]
    change = 1 - task_figure("lm", tuned) / task_figure("lm", base)
    low, high = improvement_interval("lm", base, tuned)
    assert low == pytest.approx(change) == pytest.approx(high)
    # and the verdict says that per-token perplexities of two tokenizers are in different units
    from llmkit.eval.gate import tokenizer_warnings

    (warning,) = tokenizer_warnings("lm", [{"items": base}, {"items": tuned}])
    assert "different tokens (100 and 300)" in warning and "mix units" in warning
    assert tokenizer_warnings("lm", [{"items": base}, {"items": base}]) == []
    assert tokenizer_warnings("chat", [{"items": base}, {"items": tuned}]) == []


def test_the_interval_is_95_percent_wide():
    # 400 items, half of them gained: the mean gain 0.5 has a standard error of 0.025, so a 95 % interval reaches
    # 1.96 of them (0.049) either side, a 90 % one only 1.645 (0.041)
    base = [{"score": 0.0} for _ in range(400)]
    low, high = improvement_interval("classify", base, [{"score": float(i % 2)} for i in range(400)])
    assert 0.045 < 0.5 - low < 0.054 and 0.045 < high - 0.5 < 0.054


def test_perplexity_weighs_documents_by_their_tokens_and_the_general_check_reads_rises_and_drops():
    # a long document counts for its tokens (a mean of per-document perplexities lets short ones decide); the
    # general check's rise and drop are the tuned model's losses, and "none may regress" passes when none did
    from llmkit.eval.gate import _general, task_figure

    docs = [{"nll": 10.0, "tokens": 10}, {"nll": 1.0, "tokens": 100}]
    assert task_figure("lm", docs) == pytest.approx(math.exp(11.0 / 110))
    items = [{"instruction": q, "prediction": p, "correct": c} for q, p, c in (("a", "x", True), ("b", "y", False))]
    flipped = [{**items[0], "correct": False, "prediction": "z"}, {**items[1], "correct": True, "prediction": "w"}]
    general = _general({"perplexity": 10.0, "bits_per_byte": 1.0, "answered": 0.5, "items": items},
                       {"perplexity": 12.0, "bits_per_byte": 1.1, "answered": 0.25, "items": flipped})
    assert general["perplexity_increase"] == pytest.approx(0.2) and general["answer_drop"] == pytest.approx(0.25)
    assert [(g["instruction"], g["base"]) for g in general["regressed"]] == [("a", "x")]
    assert [(g["instruction"], g["base"]) for g in general["improved"]] == [("b", "y")]
    found = checks("lm", {"base": 20.0, "tuned": 18.0, "improvement": 0.1, "interval": [0.05, 0.15]}, 0, 5, general,
                   CompareConfig(max_regressed_items=0, max_general_perplexity_increase=0.25, max_general_answer_drop=0.3))
    assert all(c["passed"] for c in found) and [c["check"] for c in found][2] == "regressed items"
    strict = checks("lm", {"base": 20.0, "tuned": 18.0, "improvement": 0.1, "interval": [0.05, 0.15]}, 0, 5, general,
                    CompareConfig(max_general_perplexity_increase=0.15, max_general_answer_drop=0.2))
    assert [c["check"] for c in strict if not c["passed"]] == ["general perplexity", "general answers"]


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model, chat_data) -> Workspace:
    return Workspace.open(lm_workspace)


@pytest.fixture(scope="module")
def early(ws):
    """tiny-lm's recipe stopped after 10 steps: the base a longer run improves on."""
    from llmkit.train import pretrain

    return pretrain(tiny_config(name="gate-early", max_steps=10), ws, Registry.for_workspace(ws.root))


@pytest.fixture(scope="module")
def wide(ws):
    """tiny-lm's recipe with room for chat prompts (context 256)."""
    from llmkit.train import pretrain

    return pretrain(tiny_config(name="gate-wide", context=256, max_steps=40, eval_every=40, checkpoint_every=40), ws,
                    Registry.for_workspace(ws.root))


@pytest.fixture(scope="module")
def wrecked(ws, wide):
    """gate-wide fully fine-tuned on the chat data at a learning rate far too high: worse at everything."""
    from llmkit.train.supervised import sft

    return sft(SftConfig(base="gate-wide", data="chats", method="full", max_steps=6, batch_size=4, max_length=160, lr=0.05,
                         warmup_ratio=0.0, eval_every=6, checkpoint_every=6, eval_max_examples=2, seed=5, skip_bad=True,
                         name="gate-wrecked"), ws, Registry.for_workspace(ws.root))


def test_a_better_model_passes_the_gate_and_the_verdict_is_registered(ws, early, tiny_model):
    registry = Registry.for_workspace(ws.root)
    result = gate("gate-early", "tiny-lm", CompareConfig(data="tiny", **FAST), ws, registry)
    assert result["split"] == "test" and result["kind"] == "lm" and result["items"] == 12
    assert result["task"]["tuned"] < result["task"]["base"] and result["task"]["improvement"] > 0
    assert result["general"]["tuned"]["perplexity"] < result["general"]["base"]["perplexity"]
    assert result["verdict"] == "pass" and result["reasons"] == [] and all(c["passed"] for c in result["checks"])
    flipped = result["flipped"]
    assert flipped["improved"] > flipped["regressed"] and len(flipped["improved_items"]) == flipped["improved"]
    for example in flipped["improved_examples"]:  # listed because the loss fell by more than the margin
        assert example["base_loss"] - example["tuned_loss"] > CompareConfig().item_loss_margin
    rec = last_gate(registry, tiny_model.id)
    assert rec.id == result["id"] and rec.params["verdict"] == "pass" and rec.params["base"] == early.ref
    assert json.loads((Path(rec.path) / "compare.json").read_text())["task"] == result["task"]
    page = (Path(rec.path) / "report.html").read_text()  # a report like every eval's (the dashboard links it)
    # with its id and what decided the verdict: the checks and their thresholds, the items that flipped ("eval -", and
    # the bare figures, before)
    assert f"eval {rec.id}" in page and json.loads((Path(rec.path) / "report.json").read_text())["id"] == rec.id
    assert "Checks (thresholds from the compare config)" in page and "compare.min_task_improvement" in page
    assert f"Items that went worse -&gt; better ({flipped['improved']})" in page and "task metric" in page
    assert flipped["improved_examples"][0]["item"] in page


def test_a_model_fine_tuned_to_get_worse_fails_the_gate_with_its_reasons(ws, wrecked):
    registry = Registry.for_workspace(ws.root)
    result = gate("gate-wide", "gate-wrecked", CompareConfig(data="tiny", split="val", **FAST), ws, registry)
    assert result["verdict"] == "fail" and not result["passed"]
    failed = {c["check"] for c in result["checks"] if not c["passed"]}
    assert {"task", "regressed share"} <= failed
    assert result["general"]["tuned"]["perplexity"] > result["general"]["base"]["perplexity"]  # it lost some English too
    assert any(r.startswith("perplexity ") and "compare.min_task_improvement" in r for r in result["reasons"])
    assert result["flipped"]["regressed"] > result["flipped"]["improved"]
    for example in result["flipped"]["regressed_examples"]:
        assert example["tuned_loss"] - example["base_loss"] > CompareConfig().item_loss_margin
    assert last_gate(registry, wrecked.id).params["verdict"] == "fail"


def test_on_chat_data_replies_are_scored_and_flips_follow_the_pass_score(ws, wrecked):
    cfg = CompareConfig(data="chats", max_items=6, max_new_tokens=12, item_pass_score=0.05, general=False)
    result = gate("gate-wide", "gate-wrecked", cfg, ws, Registry.for_workspace(ws.root))
    assert result["split"] == "val" and result["task"]["metric"] == "rougeL" and result["general"] is None
    assert 0 <= result["task"]["base"] <= 1 and result["items"] == 6
    for example in result["flipped"]["regressed_examples"]:
        assert example["base_score"] >= 0.05 > example["tuned_score"]
    for example in result["flipped"]["improved_examples"]:
        assert example["tuned_score"] >= 0.05 > example["base_score"]


def test_the_gate_refuses_what_it_cannot_compare(ws, sms_data, early):
    registry = Registry.for_workspace(ws.root)
    with pytest.raises(UserError, match=r"^compare.data is not set"):
        gate("tiny-lm", "gate-early", CompareConfig(), ws, registry)
    with pytest.raises(UserError, match=r"BASE and TUNED are the same model \(tiny-lm:v1\)"):
        gate("tiny-lm", "tiny-lm:v1", CompareConfig(data="tiny"), ws, registry)
    with pytest.raises(UserError, match=r"is a causal-lm model and sms:v1 is a classify dataset"):
        gate("tiny-lm", "gate-early", CompareConfig(data="sms"), ws, registry)
    with pytest.raises(UserError, match=r"compare.split = 'train2': dataset tiny:v1 has no records there"):
        gate("tiny-lm", "gate-early", CompareConfig(data="tiny", split="train2"), ws, registry)
    # an export as TUNED: refused before BASE is scored (minutes of silence first, on a real model)
    export = ws.root.parent / "an-export"
    export.mkdir(exist_ok=True)
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):  # an export folder keeps them
        (export / file).write_bytes((Path(registry.get("tiny-lm").path) / file).read_bytes())
    (export / "llmkit.json").write_text('{"format": "gguf", "task": "causal-lm"}')
    from rich.progress import Progress

    with Progress(disable=True) as progress, \
            pytest.raises(UserError, match=r"an-export.* is a gguf export; the gate compares the models exports are made"):
        gate("tiny-lm", str(export), CompareConfig(data="tiny"), ws, registry, progress=progress)
    assert progress.tasks == []  # nothing was scored


def test_compare_cli_exits_0_on_pass_1_on_fail_and_2_on_a_bad_threshold_key(ws, early, wrecked, tmp_path: Path, cli_here):
    root = ws.root
    passed = cli_here("compare", "gate-early", "tiny-lm", "--data", "tiny", "--max-items", "12", "--json", workspace=root)
    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout)["verdict"] == "pass"
    failed = cli_here("compare", "gate-wide", "gate-wrecked", "--data", "tiny", "--max-items", "12", workspace=root)
    assert failed.returncode == 1, failed.stderr
    assert "verdict: fail" in failed.stdout and "compare.min_task_improvement" in failed.stdout
    assert "better -> worse" in failed.stdout
    config = tmp_path / "gate.yaml"
    config.write_text("compare:\n  max_general_perplexity_incrase: 0.1\n")
    bad = cli_here("compare", "tiny-lm", "gate-wrecked", "--data", "tiny", "--config", str(config), workspace=root)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == [
        f"error: {config}:2: unknown key 'compare.max_general_perplexity_incrase' (did you mean "
        "'max_general_perplexity_increase'?); allowed keys: " + ", ".join(CompareConfig.model_fields)]
    unknown = cli_here("compare", "tiny-lm", "no-such-model", "--data", "tiny", workspace=root)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert unknown.stderr.startswith("error: no model 'no-such-model'")
    shown = cli_here("config", "show", "compare", workspace=root)
    assert "max_general_perplexity_increase: 0.05" in shown.stdout and "min_task_improvement: 0.0" in shown.stdout


@pytest.fixture(scope="module")
def worse_classifier(ws, sms_classifier):
    """sms-clf fine-tuned further at a learning rate far too high: it forgets what spam looks like."""
    from llmkit.config import ClassifyConfig
    from llmkit.train.classification import classify

    return classify(ClassifyConfig(base="sms-clf", data="sms", name="sms-clf-worse", max_steps=4, batch_size=16, lr=0.02,
                                   warmup_ratio=0.0, max_length=48, seed=1), ws, Registry.for_workspace(ws.root))


def test_on_a_classifier_the_items_that_flipped_are_the_labels_it_lost(ws, sms_classifier, worse_classifier):
    from llmkit.data.dataset import open_dataset
    from llmkit.predict import predict

    registry = Registry.for_workspace(ws.root)
    result = gate("sms-clf", "sms-clf-worse", CompareConfig(data="sms", examples=1000), ws, registry)
    assert result["split"] == "test" and result["task"]["metric"] == "accuracy" and result["general"] is None
    assert result["verdict"] == "fail" and result["task"]["tuned"] < result["task"]["base"]
    records = open_dataset(registry, "sms").records("test")
    texts, golds = [r["text"] for r in records], [r["label"] for r in records]
    base = [p["label"] for p in predict("sms-clf", texts, registry=registry)]
    tuned = [p["label"] for p in predict("sms-clf-worse", texts, registry=registry)]
    lost = [r["source"] for r, g, b, t in zip(records, golds, base, tuned, strict=True) if b == g != t]
    won = [r["source"] for r, g, b, t in zip(records, golds, base, tuned, strict=True) if t == g != b]
    assert lost and result["flipped"]["regressed_items"] == lost and result["flipped"]["improved_items"] == won
    assert result["task"]["base"] == pytest.approx(sum(b == g for b, g in zip(base, golds, strict=True)) / len(golds))
    example = result["flipped"]["regressed_examples"][0]
    assert example["base"] == example["label"] != example["tuned"]


def test_an_export_is_refused_in_one_line(tmp_path: Path):
    from llmkit.eval.items import load_lm
    from llmkit.models.io import Model

    with pytest.raises(UserError, match=r"^m-q8_0:v1 is a gguf export; the gate compares the models exports are made from"):
        load_lm(Model(tmp_path, "m-q8_0", "abc", 1, {"format": "gguf"}))


def test_promote_require_pass_reads_the_latest_gate_where_the_model_was_tuned(ws, early, tiny_model, cli_here):
    # the verdict of the LAST gate with MODEL as TUNED decides: not the first, nor one where MODEL was the BASE
    registry = Registry.for_workspace(ws.root)
    strict = CompareConfig(data="tiny", max_items=4, general=False)
    lenient = strict.model_copy(update={"min_task_improvement": -100.0, "max_regressed_share": 1.0})

    def promote() -> int:
        return cli_here("promote", "gate-early", "--alias", "gate-latest", "--require-pass", workspace=ws.root).returncode

    failed = gate("tiny-lm", "gate-early", strict, ws, registry)  # 10 steps lose to 60
    task = failed["task"]
    assert failed["verdict"] == "fail" and task["improvement"] == pytest.approx((task["base"] - task["tuned"]) / task["base"])
    assert gate("tiny-lm", "gate-early", lenient, ws, registry)["verdict"] == "pass"
    assert promote() == 0
    assert gate("tiny-lm", "gate-early", strict, ws, registry)["verdict"] == "fail"
    assert promote() == 2
    assert gate("gate-early", "tiny-lm", strict, ws, registry)["verdict"] == "pass"  # gate-early as the BASE
    assert promote() == 2 and last_gate(registry, early.id).params["tuned"] == early.ref
