"""`train grpo` on the tiny char model: the sampler decodes the policy as it is (adapters handed to the fast
decoder), the reference is the base, the reward moves the policy, figures and curves are saved; bad
rewards are refused before anything is registered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llmkit.config import DataConfig, GrpoConfig, LoraConfig, SftConfig
from llmkit.data import prepare
from llmkit.errors import UserError
from llmkit.models.io import load_causal_lm, resolve_model
from llmkit.registry import Registry
from llmkit.train.grpo import grpo
from llmkit.train.preference_loss import completion_logps, pack_sequences
from llmkit.train.rollouts import Sampler
from llmkit.train.tuned_model import load_for_training
from llmkit.workspace import Workspace
from tests.conftest import run_cli

WORDS = ["king", "queen", "lord", "night", "sword", "crown", "heart", "blood", "grace", "love"]


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model, tmp_path_factory):
    """'sums': short prompts (the tiny model's context is 32 tokens) whose reference answer is a number."""
    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    rows = [{"messages": [{"role": "user", "content": f"{a} {b}"}, {"role": "assistant", "content": str(len(a) + len(b))}]}
            for a in WORDS for b in WORDS if a != b]
    file = tmp_path_factory.mktemp("grpo") / "sums.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(DataConfig(inputs=[str(file)], name="sums", task="chat", tokenizer="char", splits={"val": 0.2, "test": 0.0}),
            ws, registry)
    registry.close()
    return ws


def _cfg(**overrides) -> GrpoConfig:
    base = dict(base="tiny-lm", data="sums", reward="regex", pattern="^[^ ]", max_steps=8, batch_size=4, group_size=6,
                max_new_tokens=6, max_length=32, lr=2e-2, eval_every=4, eval_max_examples=8, seed=2,
                lora=LoraConfig(r=4, alpha=8))
    return GrpoConfig(**(base | overrides))


def _greedy_by_forward(model, prompt: list[int], n: int) -> list[int]:
    """Greedy answer from full forwards of the training module itself (no cache, no fast decoder)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            hidden = model.hidden_states(torch.tensor([ids]))
            ids.append(int(model.lm_head(hidden[0, -1]).argmax()))
    return ids[len(prompt):]


def test_sampler_decodes_the_policy_as_it_is_now(ws):
    """Adapters with non-zero B (as after some training): the fast decoder, handed them per row, answers
    exactly as the policy's own forward does; with adapters off, as the base does."""
    registry = Registry.for_workspace(ws.root)
    base = resolve_model("tiny-lm", registry)
    cfg = SftConfig(base="tiny-lm", lora=LoraConfig(r=4, alpha=8), precision="fp32")
    policy, tok, path = load_for_training(base, cfg, "cpu", None)
    assert path == "fast"
    torch.manual_seed(0)
    with torch.no_grad():
        for _, _, name, module in policy.adapters():
            module.lora_B[name].normal_(0, 0.5)
    sampler = Sampler(policy, base, path, "lora", cfg.lora.alpha / cfg.lora.r)
    prompts = [tok("king lord")["input_ids"], tok("the crown")["input_ids"]]
    ours = sampler.sample(prompts, 2, 8, 0.0, set())
    for k, prompt in enumerate(prompts):
        expected = _greedy_by_forward(policy, prompt, 8)
        assert ours[2 * k] == ours[2 * k + 1] == expected
        with policy.adapters_off():
            base_answer = _greedy_by_forward(policy, prompt, 8)
        assert base_answer != expected  # the adapters change the answer, so the check above means something
    sampled = sampler.sample(prompts, 3, 8, 1.0, set())
    assert len(sampled) == 6 and all(len(a) == 8 for a in sampled)


@pytest.fixture(scope="module")
def grpo_model(ws):
    return grpo(_cfg(name="tiny-grpo"), ws, Registry.for_workspace(ws.root))


def test_grpo_logs_rewards_and_kl_saves_curves_and_samples(grpo_model):
    run = Path(grpo_model.lineage["run"]["path"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    assert len(steps) == 8
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is the reference
    assert max(r["kl"] for r in steps[1:]) > 0
    assert {"reward_std", "answer_tokens"} <= set(steps[0])
    assert [r for r in rows if "val_reward" in r]
    assert (run / "plots" / "rewards.png").stat().st_size > 1000
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["kind"] for s in samples} == {"train", "val"} and all(set(s) >= {"prompt", "answer", "reward"} for s in samples)
    summary = grpo_model.lineage["metrics"]
    assert "val_reward_before" in summary and summary["reward"] == "regex"


def test_grpo_samples_on_the_fast_decoder_inside_bf16_autocast(ws):
    """precision bf16 (what "auto" is on a CPU with bf16 instructions): the groups are sampled inside the training
    step's autocast, where the fast decoder's products came out bf16 and its fp32 LoRA adds failed on the first step."""
    registry = Registry.for_workspace(ws.root)
    model = grpo(_cfg(name="tiny-grpo-bf16", precision="bf16", max_steps=2, eval_every=2, eval_max_examples=2), ws, registry)
    assert model.lineage["metrics"]["precision"] == "bf16"
    rows = [json.loads(line) for line in (Path(model.lineage["run"]["path"]) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward" in r]
    assert len(steps) == 2 and all(0 < r["answer_tokens"] <= 6 for r in steps)


def test_one_step_moves_the_policy_toward_the_better_answers_of_each_group(ws):
    """After one step, sum_i A_i * (log p_tuned(answer_i) - log p_base(answer_i)) > 0 over the step's sampled answers
    (A: their group-normalised advantages): the update raised the better answers of each group against the worse.
    With the policy gradient's sign flipped this is negative."""
    registry = Registry.for_workspace(ws.root)
    cfg = _cfg(name="tiny-grpo-step", pattern="^[aeiou]", max_steps=1, beta=0.0, lr=1e-3, warmup_ratio=0.0,
               samples_logged=24, eval_max_examples=1)
    model = grpo(cfg, ws, registry)
    run = Path(model.lineage["run"]["path"])
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    samples = [s for s in samples if s["kind"] == "train"]
    assert len(samples) == cfg.batch_size * cfg.group_size
    tuned, tok = load_causal_lm(resolve_model(model.ref, registry))
    base, _ = load_causal_lm(resolve_model("tiny-lm", registry))
    prompts, answers = [], []
    for s in samples:
        ids = tok.apply_chat_template([{"role": "user", "content": s["prompt"]}], tokenize=True, add_generation_prompt=True)
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
        answers.append(tok(s["answer"], add_special_tokens=False)["input_ids"] or [tok.eos_token_id])
    batch = pack_sequences(prompts, answers, 0)
    with torch.no_grad():
        delta = completion_logps(tuned.eval(), batch).summed - completion_logps(base.eval(), batch).summed
    rewards = torch.tensor([s["reward"] for s in samples]).view(cfg.batch_size, cfg.group_size)
    advantages = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)).view(-1)
    assert advantages.abs().sum() > 0  # some group had better and worse answers
    assert float((advantages * delta).sum()) > 0
    # The logged loss, by hand: with beta 0 and the ratio 1 in value, minus the mean advantage over every answer token
    # of the step (each answer's own, normalised within its group by the group's std; DAPO's token-level mean).
    (step,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]
    assert step["reward"] == pytest.approx(float(rewards.mean()), abs=1e-5)
    assert step["reward_std"] == pytest.approx(float(rewards.std(1).mean()), abs=1e-5)
    # an answer shorter than max_new_tokens ended on an end token: its text leaves it out, its loss does not
    lengths = torch.tensor([len(tok(s["answer"], add_special_tokens=False)["input_ids"]) for s in samples])
    lengths = torch.where(lengths < cfg.max_new_tokens, lengths + 1, lengths)
    assert float(lengths.float().mean()) == pytest.approx(step["answer_tokens"], abs=1e-5)
    assert step["loss"] == pytest.approx(float(-(advantages * lengths).sum() / lengths.sum()), abs=1e-5)


def test_bad_rewards_stop_before_anything_is_registered(ws, tmp_path, monkeypatch):
    registry = Registry.for_workspace(ws.root)
    runs = len(registry.list("run"))
    (tmp_path / "my_rewards.py").write_text(
        "def broken(prompt, completion, record):\n    raise KeyError('score')\n"
        "def nan(prompt, completion, record):\n    return float('nan')\n"
        # fine on the reference answers (digits), raises on the model's first samples: past the check, after the
        # run was registered (it was left behind, with no metrics, no state and no model)
        "def late(prompt, completion, record):\n    assert completion.strip().isdigit(), completion\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"reward 'my_rewards:broken' raised KeyError: 'score' \(prompt '\w+ \w+'\)"):
        grpo(_cfg(reward="my_rewards:broken"), ws, registry)
    with pytest.raises(UserError, match=r"returned nan \(prompt '\w+ \w+'\); a reward must be a finite number"):
        grpo(_cfg(reward="my_rewards:nan"), ws, registry)
    with pytest.raises(UserError, match="has no function 'missing'"):
        grpo(_cfg(reward="my_rewards:missing"), ws, registry)
    folders = set((ws.root / "runs").iterdir())
    with pytest.raises(UserError, match=r"reward 'my_rewards:late' raised AssertionError"):
        grpo(_cfg(reward="my_rewards:late", name="late-grpo"), ws, registry)
    assert len(registry.list("run")) == runs and set((ws.root / "runs").iterdir()) == folders
    proc = run_cli("train", "grpo", "--base", "tiny-lm", "--data", "sums", "--reward", "regex", workspace=ws.root)
    assert proc.returncode == 2 and "--reward regex needs --pattern" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", "grpo", "--base", "tiny-lm", "--data", "sums", "--reward", "number", "--max-new-tokens", "40",
                   workspace=ws.root)
    assert proc.returncode == 2 and "leaves no room for a prompt in 32 tokens" in proc.stderr
