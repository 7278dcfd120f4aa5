"""`train dpo | orpo | kto` on the tiny char model: the reference is the base, the losses learn a preference the
base does not have, figures are logged per step, the tuned model is registered; bad input is refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from llmkit.config import DataConfig, DpoConfig, KtoConfig, LoraConfig, OrpoConfig
from llmkit.data import prepare
from llmkit.errors import UserError
from llmkit.models.io import load_causal_lm, load_tokenizer_for, resolve_model
from llmkit.registry import Registry
from llmkit.train.preference import _loss_fn, encode_records, preference_tune, score_reference
from llmkit.train.preference_loss import completion_logps, pack_sequences
from llmkit.workspace import Workspace
from tests.conftest import run_cli

WORDS = ["king", "queen", "lord", "night", "sword", "crown", "heart", "blood", "grace", "honour", "death", "love"]


def _pairs() -> list[dict]:
    """Chosen answers start with 'aye, ' and rejected ones do not: a rule the tiny model knows nothing about."""
    rows = []
    for i, a in enumerate(WORDS):
        for b in WORDS[i + 1:]:
            prompt = f"speak of {a} and {b}"
            rows.append({"prompt": prompt, "chosen": f"aye, the {a} and the {b}.", "rejected": f"the {b} and the {a}."})
    return rows


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model, chat_data, tmp_path_factory):
    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    folder = tmp_path_factory.mktemp("prefs")
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _pairs()))
    prepare(DataConfig(inputs=[str(folder / "pairs.jsonl")], name="prefs", task="preference", tokenizer="char",
                       splits={"val": 0.2, "test": 0.0}), ws, registry)
    (folder / "rated.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["rejected"], "label": False}) + "\n"
                                                for r in _pairs()[:10]))
    prepare(DataConfig(inputs=[str(folder / "rated.jsonl")], name="rated-only", task="preference", tokenizer="char",
                       splits={"val": 0.2, "test": 0.0}), ws, registry)
    # KTO data with both ratings and no pairs: each prompt has one answer, desirable ones start with "aye, "
    (folder / "kto.jsonl").write_text("".join(
        json.dumps({"prompt": r["prompt"], "completion": r["chosen"] if i % 2 else r["rejected"], "label": bool(i % 2)}) + "\n"
        for i, r in enumerate(_pairs())))
    prepare(DataConfig(inputs=[str(folder / "kto.jsonl")], name="kto-rated", task="preference", tokenizer="char",
                       splits={"val": 0.3, "test": 0.0}), ws, registry)
    registry.close()
    return ws


def _cfg(kind=DpoConfig, **overrides):
    # fp32 whatever the CPU offers ("auto" is bf16 autocast where the CPU has bf16 instructions): step 1's log 2 is
    # exact only in fp32, and ORPO's val margin on the tiny model (~0.03 nats) is below bf16's rounding of its
    # logits (a bf16 run scored 0.375)
    base = dict(base="tiny-lm", data="prefs", max_steps=24, batch_size=8, lr=1e-2, beta=0.5, eval_every=12,
                checkpoint_every=24, seed=5, lora=LoraConfig(r=8, alpha=16), precision="fp32")
    return kind(**(base | overrides))


def _metrics(model) -> list[dict]:
    run = Path(model.lineage["run"]["path"])
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dpo_model(ws):
    return preference_tune(_cfg(name="tiny-dpo"), "dpo", ws, Registry.for_workspace(ws.root))


def test_dpo_starts_at_log_two_and_learns_the_preference(dpo_model):
    rows = _metrics(dpo_model)
    steps = [r for r in rows if "rewards/margin" in r]
    # Step 1 runs on the model the reference was computed from: every log-ratio is 0, the loss is log 2.
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert steps[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-4)
    assert {"rewards/rejected", "rewards/accuracy"} <= set(steps[-1])
    evals = [r for r in rows if "val_reward_accuracy" in r]
    assert evals[-1]["val_reward_accuracy"] >= 0.9
    assert evals[-1]["val_reward_margin"] > 0 and evals[-1]["val_loss"] < math.log(2)
    assert dpo_model.lineage["tuning"] == "dpo" and dpo_model.lineage["method"] == "lora"


def test_the_reference_is_the_base_model(ws, tiny_model):
    """The precomputed reference log-probs are the base's own, scored by a separately loaded copy of it."""
    registry = Registry.for_workspace(ws.root)
    from llmkit.data.dataset import open_dataset
    from llmkit.train.preference import score_reference

    base = resolve_model("tiny-lm", registry)
    tok = load_tokenizer_for(base)
    examples, _ = encode_records(tok, open_dataset(registry, "prefs").records("val")[:4], "dpo", 384, False, "val")
    lm, _ = load_causal_lm(base)
    score_reference(lm, examples, 2, 0, "cpu", "fp32")
    answers = [e.chosen for e in examples]
    with torch.no_grad():
        fresh = completion_logps(load_causal_lm(base)[0].eval(), pack_sequences([a.prompt for a in answers],
                                                                               [a.answer for a in answers], 0))
    torch.testing.assert_close(torch.tensor([a.ref for a in answers]), fresh.summed, rtol=0, atol=1e-4)


def test_orpo_and_kto_learn_it_too(ws):
    registry = Registry.for_workspace(ws.root)
    orpo = preference_tune(_cfg(OrpoConfig, name="tiny-orpo", beta=1.0), "orpo", ws, registry)
    evals = [r for r in _metrics(orpo) if "val_reward_accuracy" in r]
    assert evals[-1]["val_reward_accuracy"] >= 0.9
    assert "nll" in [r for r in _metrics(orpo) if "rewards/margin" in r][0]
    kto = preference_tune(_cfg(KtoConfig, name="tiny-kto", lr=3e-3), "kto", ws, registry)
    steps = [r for r in _metrics(kto) if "kl" in r]
    assert steps and steps[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # 1 - sigmoid(0): policy = reference at step 1
    assert [r for r in _metrics(kto) if "val_reward_margin" in r][-1]["val_reward_margin"] > 0


def test_full_tuning_and_the_cli(ws):
    proc = run_cli("train", "dpo", "--base", "tiny-lm", "--data", "prefs", "--method", "full", "--max-steps", "2",
                   "--batch-size", "4", "--name", "tiny-dpo-full", "--json", workspace=ws.root)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["name"] == "tiny-dpo-full" and out["metrics"]["method"] == "full" and "val_reward_accuracy" in out["metrics"]


def test_bad_input_is_one_line_and_registers_nothing(ws):
    registry = Registry.for_workspace(ws.root)
    before = len(registry.list("run"))
    with pytest.raises(UserError, match="rated answers and no pair.*train kto"):
        preference_tune(_cfg(data="rated-only"), "dpo", ws, registry)
    with pytest.raises(UserError, match=r"records/train.jsonl:\d+: the prompt takes all of the 12 tokens.*--skip-bad"):
        preference_tune(_cfg(max_length=12), "dpo", ws, registry)
    proc = run_cli("train", "orpo", "--base", "tiny-lm", "--data", "chats", workspace=ws.root)
    assert proc.returncode == 2 and "needs one prepared with --task preference" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(registry.list("run")) == before


def test_compare_gates_a_preference_tuned_model_on_held_out_pairs(ws, dpo_model):
    """`llmkit compare BASE TUNED --data PREFS`: the share of held-out pairs ranked right (mean log-prob per answer
    token, chosen above rejected) rises from the base's to the tuned model's; flipped pairs carry both margins."""
    from llmkit.config import CompareConfig
    from llmkit.eval.gate import gate

    result = gate("tiny-lm", dpo_model.ref, CompareConfig(data="prefs", general=False), ws, Registry.for_workspace(ws.root))
    task = result["task"]
    assert task["metric"] == "preference_accuracy" and 0 < result["items"] < len(_pairs())  # the val split
    assert task["tuned"] >= 0.9 and task["tuned"] - task["base"] >= 0.3, task
    assert result["verdict"] == "pass" and result["flipped"]["improved"] > 0
    example = result["flipped"]["improved_examples"][0]
    assert example["base_margin"] <= 0 < example["tuned_margin"] and example["chosen"].startswith("aye, ")
    low, high = task["interval"]  # paired bootstrap over the same held-out pairs
    assert low <= task["improvement"] <= high and low > 0
    assert result["warnings"] == [f"{result['items']} held-out items: a verdict on so few says little "
                                  "(score a larger split, or prepare more held-out data)"]


def test_compare_gates_a_kto_tuned_model_on_held_out_rated_answers(ws):
    """KTO data has no pairs: the gate ranks the split's desirable answers against its undesirable ones by mean
    log-prob per answer token (an AUC), which KTO raises; a split of one rating alone is refused in one line."""
    from llmkit.config import CompareConfig
    from llmkit.eval.gate import gate

    registry = Registry.for_workspace(ws.root)
    # unpaired, KTO learns the rule more slowly than from pairs: its own val reward margin is still negative at 48
    # steps, and at 96 the held-out AUC sat on the 0.8 line (0.79 or above, with the tiny base's exact weights); at
    # 128 it is 1.0 with a val reward margin of 4
    kto = preference_tune(_cfg(KtoConfig, data="kto-rated", name="tiny-kto-rated", max_steps=128, eval_every=128,
                               checkpoint_every=128), "kto", ws, registry)
    result = gate("tiny-lm", kto.ref, CompareConfig(data="kto-rated", general=False), ws, registry)
    task = result["task"]
    assert result["kind"] == "rated" and task["metric"] == "rated_answer_auc", task
    margin = [r for r in _metrics(kto) if "val_reward_margin" in r][-1]["val_reward_margin"]
    assert margin > 0 and task["tuned"] >= 0.8 and task["improvement"] >= 0.1 and task["interval"][0] > 0, (margin, task)
    assert result["verdict"] == "pass" and result["flipped"]["improved"] > 0
    example = result["flipped"]["improved_examples"][0]
    assert example["rating"] in ("desirable", "undesirable") and example["base_logp"] != example["tuned_logp"]
    with pytest.raises(UserError, match=r"rated-only:v\d+ val: its \d+ rated answers are all undesirable and it has no pairs"):
        gate("tiny-lm", kto.ref, CompareConfig(data="rated-only", general=False), ws, registry)


def test_dpo_sft_weight_adds_the_chosen_answers_mean_token_loss(ws):
    """--sft-weight w: step 1's loss is log 2 + w x (mean next-token loss over the chosen answers' tokens), the
    logged nll that term."""
    registry = Registry.for_workspace(ws.root)
    model = preference_tune(_cfg(name="tiny-rpo", sft_weight=0.5, max_steps=1, eval_every=1), "dpo", ws, registry)
    first = [r for r in _metrics(model) if "rewards/margin" in r][0]
    assert first["nll"] > 0
    assert first["loss"] == pytest.approx(math.log(2) + 0.5 * first["nll"], abs=1e-4)


def test_kto_examples_pair_each_prompt_with_the_previous_answer_and_count_what_was_cut(ws):
    """KTO's KL estimate scores each prompt with its predecessor's answer (rolled once over the split, TRL's choice);
    an answer cut to --max-length counts as truncated, one that fits exactly does not."""
    from llmkit.data.dataset import open_dataset

    registry = Registry.for_workspace(ws.root)
    tok = load_tokenizer_for(resolve_model("tiny-lm", registry))
    records = open_dataset(registry, "prefs").records("val")[:3]
    examples, counts = encode_records(tok, records, "kto", 384, False, "val")
    assert [e.desirable for e in examples] == [True, False] * 3 and counts["truncated"] == 0
    assert [tok.decode(e.answer.answer).startswith("aye, ") for e in examples] == [True, False] * 3  # chosen: desirable
    answers = [e.answer.answer for e in examples]
    assert len(set(map(tuple, answers))) == 6
    assert [e.mismatched.answer for e in examples] == answers[-1:] + answers[:-1]
    assert [e.mismatched.prompt for e in examples] == [e.answer.prompt for e in examples]

    (pair,), _ = encode_records(tok, records[:1], "dpo", 384, False, "val")
    assert len(pair.chosen.answer) > len(pair.rejected.answer)  # "aye, the a and the b." against "the b and the a."
    fits_rejected = len(pair.rejected.prompt) + len(pair.rejected.answer)
    (cut,), counts = encode_records(tok, records[:1], "dpo", fits_rejected, False, "val")
    assert counts["truncated"] == 1 and cut.rejected.answer == pair.rejected.answer
    assert cut.chosen.answer == pair.chosen.answer[: len(pair.rejected.answer)]


def test_dpo_sft_term_is_the_mean_token_loss_of_the_chosen_answers_alone(ws):
    """The --sft-weight term averages the next-token loss over the chosen answers' tokens only (TRL's "sft" loss type),
    computed here by hand from the model's logits; the rejected answers' tokens are in neither sum."""
    from llmkit.data.dataset import open_dataset

    registry = Registry.for_workspace(ws.root)
    base = resolve_model("tiny-lm", registry)
    tok = load_tokenizer_for(base)
    examples, _ = encode_records(tok, open_dataset(registry, "prefs").records("val")[:3], "dpo", 384, False, "val")
    lm = load_causal_lm(base)[0].eval()
    score_reference(lm, examples, 2, 0, "cpu", "fp32")
    loss, tokens, figures = _loss_fn("dpo", _cfg(sft_weight=0.5), 0, "cpu")(lm, examples)
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            logp = lm(input_ids=torch.tensor([e.chosen.prompt + e.chosen.answer])).logits[0].float().log_softmax(-1)
            total += sum(float(logp[len(e.chosen.prompt) + k - 1, t]) for k, t in enumerate(e.chosen.answer))
            count += len(e.chosen.answer)
    assert figures["nll"] == pytest.approx(-total / count, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(math.log(2) + 0.5 * figures["nll"], abs=1e-4)  # the model is its own reference
    assert tokens == sum(len(e.chosen.answer) + len(e.rejected.answer) for e in examples)
