"""From feedback to a better model in one go: answers served over the real API, corrected and rated through
POST /v1/feedback, `llmkit data from-feedback --task preference`, `llmkit train dpo`, and the tuned model
prefers the corrections over the answers they corrected.

The corrections follow one rule the served model knows nothing about ("aye, " before its own answer), so
what the tuned model prefers is what the feedback taught it, and nothing it preferred already.
"""

from __future__ import annotations

import json

import openai
import pytest
import requests
import torch

from llmkit.data.dataset import open_dataset
from llmkit.data.tokenizer import CHAT_TEMPLATE
from llmkit.models.io import load_causal_lm, load_tokenizer_for, resolve_model
from llmkit.registry import Registry
from llmkit.train.preference_loss import completion_logps, encode_completion, pack_sequences
from tests.conftest import run_cli
from tests.serve.conftest import start_server

# Served under a name of its own, so that `--model` picks this test's feedback alone out of the session's registry.
SERVED = "aye-lm"
WORDS = ["king", "queen", "lord", "night", "sword", "crown", "heart", "blood", "grace", "honour", "death", "love",
         "storm", "ghost", "field", "rose", "tower", "river", "wine", "bread", "horse", "letter", "moon", "father"]
CORRECTED = [f"Speak to me of the {w}." for w in WORDS]
RATED = ["What says the fool?", "Where is the prince?", "Who comes here?"]  # two answers each: one up, one down
LONE = "Why so sad?"  # one thumbs-down and nothing to pair it with: a KTO record, which DPO skips
BETA = 0.5


def _answers(client: openai.OpenAI, prompt: str, count: int) -> list:
    """`count` responses to `prompt` with different non-empty texts (the tiny model often ends its turn at once)."""
    found, texts = [], set()
    for seed in range(60):
        out = client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": prompt}],
                                             max_tokens=12, seed=seed)
        text = " ".join(out.choices[0].message.content.split())
        if text and text not in texts:
            found.append(out)
            texts.add(text)
            if len(found) == count:
                return found
    raise AssertionError(f"the served model said nothing new to {prompt!r} in 60 tries")


def _feedback(url: str, response_id: str, **body) -> None:
    r = requests.post(url + "/v1/feedback", json={"response_id": response_id, **body}, timeout=30)
    assert r.status_code == 200, r.text


def _answer_logps(model, tokenizer, records: list[dict], key: str) -> torch.Tensor:
    """(N,) summed log-probs of each record's `key` answer after its prompt, as the DPO trainer scores them."""
    encoded = [encode_completion(tokenizer, r["prompt"], r[key], 384) for r in records]
    batch = pack_sequences([p for p, _ in encoded], [c for _, c in encoded], tokenizer.pad_token_id or 0)
    with torch.no_grad():
        return completion_logps(model.eval(), batch).summed


@pytest.mark.slow  # two CLI processes, each loading torch: ~15 s
def test_corrections_posted_to_the_server_teach_dpo_to_prefer_them(lm_workspace, serve_lm):
    running, _ = start_server(lm_workspace, [f"{SERVED}={serve_lm}"], ui=False)
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
        for prompt in CORRECTED:
            (out,) = _answers(client, prompt, 1)
            _feedback(running.url, out.id, rating=-1, correction="aye, " + out.choices[0].message.content.strip())
        for prompt in RATED:
            up, down = _answers(client, prompt, 2)
            _feedback(running.url, up.id, rating=1)
            _feedback(running.url, down.id, rating=-1)
        (lone,) = _answers(client, LONE, 1)
        _feedback(running.url, lone.id, rating=-1)
    finally:
        running.stop()

    proc = run_cli("data", "from-feedback", "--task", "preference", "--name", "aye-feedback", "--model", SERVED,
                   "--json", workspace=lm_workspace, check=True)
    made = json.loads(proc.stdout)
    assert made["task"] == "preference" and made["feedback_rows"] == len(CORRECTED) + 2 * len(RATED) + 1
    assert made["used"] == {"pairs_from_corrections": len(CORRECTED), "pairs_from_ratings": len(RATED),
                            "unpaired_true": 0, "unpaired_false": 1}
    assert made["skipped"] == {}
    assert made["preference"]["pairs"] == len(CORRECTED) + len(RATED)

    proc = run_cli("train", "dpo", "--base", serve_lm, "--data", "aye-feedback", "--name", "aye-dpo", "--max-steps", "12",
                   "--batch-size", "8", "--lr", "1e-2", "--beta", str(BETA), "--lora-r", "8", "--lora-alpha", "16",
                   "--seed", "5", "--json", workspace=lm_workspace, check=True)
    trained = json.loads(proc.stdout)
    # Every pair trains or evaluates; the lone thumbs-down is a KTO record, which DPO skips and counts.
    assert trained["metrics"]["skipped"] == 1
    assert trained["metrics"]["train_examples"] + trained["metrics"]["val_examples"] == len(CORRECTED) + len(RATED)

    registry = Registry.for_workspace(lm_workspace)
    ds = open_dataset(registry, "aye-feedback")
    pairs = [r for split in ("train", "val") for r in ds.records(split) if r.get("chosen", "").startswith("aye, ")]
    assert len(pairs) == len(CORRECTED)  # no rated answer of the tiny model happens to start with "aye, "
    base_model = resolve_model(serve_lm, registry)
    tokenizer = load_tokenizer_for(base_model)
    tokenizer.chat_template = tokenizer.chat_template or CHAT_TEMPLATE  # as `train dpo` renders the pairs
    base = load_causal_lm(base_model)[0]
    tuned = load_causal_lm(resolve_model(trained["name"], registry))[0]  # the LoRA adapter, merged into the base
    base_chosen, base_rejected = (_answer_logps(base, tokenizer, pairs, k) for k in ("chosen", "rejected"))
    tuned_chosen, tuned_rejected = (_answer_logps(tuned, tokenizer, pairs, k) for k in ("chosen", "rejected"))

    # Why this can fail: the base itself prefers the corrections in few pairs (they are its own answer with
    # five characters it would not write put in front), and the implicit reward below is 0 for every answer
    # of an untuned model, so a `train dpo` that learned nothing, or learned the wrong way round, scores ~0.
    base_prefers = (base_chosen > base_rejected).float().mean().item()
    assert base_prefers < 0.5
    reward_chosen, reward_rejected = BETA * (tuned_chosen - base_chosen), BETA * (tuned_rejected - base_rejected)
    accuracy = (reward_chosen > reward_rejected).float().mean().item()
    assert accuracy >= 0.9, (f"reward accuracy {accuracy:.2f} on {len(pairs)} corrected pairs, mean margin "
                             f"{(reward_chosen - reward_rejected).mean().item():.2f}")
