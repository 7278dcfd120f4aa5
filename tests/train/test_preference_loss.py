"""DPO, ORPO and KTO losses against TRL's own code on the same batch, to 1e-5.

TRL 1.16 computes these losses inside trainer methods that also run the model (DPOTrainer._compute_loss,
ORPOTrainer.get_batch_loss_metrics, KTOTrainer._compute_loss). They are called unbound on an object
carrying the attributes they read (beta, loss type, weights, a real CPU `accelerate.Accelerator`), with
two real tiny Llama models as policy and reference; llmkit computes the same batch with
`completion_logps` and the pure loss functions. So each comparison checks the log-prob helper (masks,
shift, padding) and the formula together. Each test also shows a wrong beta or weight would be caught.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator  # TRL's own dependency
from transformers import AutoTokenizer, LlamaForCausalLM
from trl.experimental.orpo import ORPOTrainer  # TRL is a test dependency only (pyproject's dev extra)
from trl.trainer import DPOTrainer, KTOTrainer, add_fused_lm_head

from llmkit.config import DataConfig
from llmkit.data import prepare
from llmkit.models.llama import from_hf_folder
from llmkit.models.presets import llama_config
from llmkit.registry import Registry
from llmkit.train.preference_loss import (
    completion_logps,
    dpo_loss,
    encode_completion,
    kto_loss,
    kto_mismatched,
    orpo_loss,
    pack_sequences,
)
from llmkit.workspace import Workspace

VOCAB, PAD = 48, 0
TOL = dict(rtol=1e-5, atol=1e-5)


def tiny_llama(seed: int, sharpness: float = 1.0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = llama_config("nano", VOCAB, 64, bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
                       overrides=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2))
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # logits x sharpness: a peakier model gives random completions lower log-probs
        model.model.norm.weight.mul_(sharpness)
    # TRL's trainers run models through its fused head (log-probs without logits); the plain forward,
    # which llmkit uses, is unchanged by the patch.
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return model


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return tiny_llama(0), tiny_llama(1)


@pytest.fixture(scope="module")
def sharp_reference():
    # A reference peakier than the policy, so that the policy's log-ratio on mismatched pairs, KTO's KL
    # estimate, is clearly positive and not clamped to 0 (random models of equal scale give either sign).
    return tiny_llama(1, sharpness=3.0)


def random_ids(gen: torch.Generator, n: int, low: int, high: int) -> list[list[int]]:
    return [torch.randint(3, VOCAB, (int(torch.randint(low, high, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(n)]


def pairs(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return random_ids(gen, n, 3, 8), random_ids(gen, n, 2, 10), random_ids(gen, n, 2, 10)


def trainer_state(policy, ref, **attrs) -> SimpleNamespace:
    """What TRL's loss methods read from `self`: real config values, a CPU Accelerator, empty metric logs."""
    return SimpleNamespace(model=policy, ref_model=ref, accelerator=Accelerator(cpu=True), aux_loss_enabled=False,
                           precompute_ref_logps=False, args=SimpleNamespace(gradient_checkpointing_kwargs=None),
                           _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0,
                           _tp_size=1, **attrs)


def logged_metrics(state) -> dict[str, float]:
    """The last value of each metric TRL logged (under "eval": the models are in eval mode, without dropout)."""
    return {k: v[-1] for mode in state._metrics.values() for k, v in mode.items()}


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_rewards_and_gradient_match_trl(models, beta):
    policy, ref = models
    prompts, chosen, rejected = pairs(4)
    batch = pack_sequences(prompts + prompts, chosen + rejected, PAD)  # TRL's layout: [chosen; rejected]

    state = trainer_state(policy, ref, beta=beta, ld_alpha=None, f_divergence_type="reverse_kl",
                          loss_types=["sigmoid"], loss_weights=[1.0], use_weighting=False)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "completion_mask": batch.completion_mask}
    policy.zero_grad()
    trl_loss = DPOTrainer._compute_loss(state, policy, inputs, return_outputs=False)
    trl_loss.backward()
    trl_grad = policy.model.embed_tokens.weight.grad.clone()
    logged = logged_metrics(state)

    policy.zero_grad()
    logps = completion_logps(policy, batch)
    with torch.no_grad():
        ref_logps = completion_logps(ref, batch)
    c, r = slice(0, 4), slice(4, 8)
    ours = dpo_loss(logps.summed[c], logps.summed[r], ref_logps.summed[c], ref_logps.summed[r], beta=beta)
    ours.loss.backward()

    torch.testing.assert_close(ours.loss, trl_loss, **TOL)
    torch.testing.assert_close(policy.model.embed_tokens.weight.grad, trl_grad, **TOL)
    m = ours.metrics()
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        ours_name = {"rewards/accuracies": "rewards/accuracy", "rewards/margins": "rewards/margin"}.get(name, name)
        assert m[ours_name] == pytest.approx(logged[name], abs=1e-5), name
    assert logged["logps/chosen"] == pytest.approx(float(logps.summed[c].detach().mean()), abs=1e-4)
    # The comparison can fail: another beta gives another loss.
    wrong = dpo_loss(logps.summed[c], logps.summed[r], ref_logps.summed[c], ref_logps.summed[r], beta=beta * 1.1)
    assert abs(float(wrong.loss) - float(trl_loss)) > 1e-4


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_loss_with_its_nll_and_log_odds_matches_trl(models, lam):
    policy, _ = models
    prompts, chosen, rejected = pairs(4, seed=1)
    batch = pack_sequences(prompts + prompts, chosen + rejected, PAD)
    labels = batch.input_ids.masked_fill(batch.completion_mask == 0, -100)  # TRL's: completion tokens only
    trl_batch = {}
    for name, rows in (("chosen", slice(0, 4)), ("rejected", slice(4, 8))):
        trl_batch |= {f"{name}_input_ids": batch.input_ids[rows], f"{name}_attention_mask": batch.attention_mask[rows],
                      f"{name}_labels": labels[rows]}
    state = trainer_state(policy, None, beta=lam, is_encoder_decoder=False, padding_value=PAD,
                          concatenated_inputs=ORPOTrainer.concatenated_inputs, get_batch_logps=ORPOTrainer.get_batch_logps)
    state.concatenated_forward = functools.partial(ORPOTrainer.concatenated_forward, state)
    state.odds_ratio_loss = functools.partial(ORPOTrainer.odds_ratio_loss, state)
    trl_loss, trl_metrics = ORPOTrainer.get_batch_loss_metrics(state, policy, trl_batch, "train")

    logps = completion_logps(policy, batch)
    c, r = logps.select(slice(0, 4)), logps.select(slice(4, 8))
    ours = orpo_loss(c.mean, r.mean, c.nll(), lam=lam)

    torch.testing.assert_close(ours.loss, trl_loss, **TOL)
    m = ours.metrics()
    assert m["nll"] == pytest.approx(trl_metrics["nll_loss"], abs=1e-5)
    assert m["log_odds_ratio"] == pytest.approx(trl_metrics["log_odds_ratio"], abs=1e-5)
    assert m["log_odds_chosen"] == pytest.approx(trl_metrics["log_odds_chosen"], abs=1e-5)
    assert m["rewards/chosen"] == pytest.approx(trl_metrics["rewards/chosen"], abs=1e-5)
    assert m["rewards/accuracy"] == pytest.approx(trl_metrics["rewards/accuracies"], abs=1e-5)
    assert m["rewards/margin"] == pytest.approx(trl_metrics["rewards/margins"], abs=1e-5)
    wrong = orpo_loss(c.mean, r.mean, c.nll(), lam=lam * 1.5)
    assert abs(float(wrong.loss) - float(trl_loss)) > 1e-4


@pytest.mark.parametrize(("beta", "desirable", "undesirable"), [(0.1, 1.0, 1.0), (0.5, 1.33, 0.75)])
def test_kto_loss_with_the_batch_kl_estimate_matches_trl(models, sharp_reference, beta, desirable, undesirable):
    policy, ref = models[0], sharp_reference
    gen = torch.Generator().manual_seed(2)
    prompts, completions = random_ids(gen, 6, 3, 8), random_ids(gen, 6, 2, 10)
    labels = torch.tensor([True, False, True, True, False, False])
    batch = pack_sequences(prompts, completions, PAD)
    kl_batch = pack_sequences(prompts, kto_mismatched(completions), PAD)

    state = trainer_state(policy, ref, beta=beta, desirable_weight=desirable, undesirable_weight=undesirable,
                          calculate_KL=True, loss_type="kto")
    state._compute_kl_logps = functools.partial(KTOTrainer._compute_kl_logps, state)
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "completion_mask": batch.completion_mask, "KL_input_ids": kl_batch.input_ids,
              "KL_attention_mask": kl_batch.attention_mask, "KL_completion_mask": kl_batch.completion_mask,
              "label": labels}
    trl_loss = KTOTrainer._compute_loss(state, policy, inputs, return_outputs=False)
    logged = logged_metrics(state)

    policy_logps = completion_logps(policy, batch).summed
    with torch.no_grad():
        ref_logps = completion_logps(ref, batch).summed
        policy_kl, ref_kl = completion_logps(policy, kl_batch).summed, completion_logps(ref, kl_batch).summed
    ours = kto_loss(policy_logps, ref_logps, labels, policy_kl, ref_kl, beta=beta,
                    desirable_weight=desirable, undesirable_weight=undesirable)

    assert float(ours.extra["kl"]) > 0.01  # the KL term is in play (a negative estimate is clamped to 0)
    torch.testing.assert_close(ours.loss, trl_loss, **TOL)
    m = ours.metrics()
    assert m["kl"] == pytest.approx(logged["kl"], abs=1e-5)
    assert m["rewards/chosen"] == pytest.approx(logged["rewards/chosen"], abs=1e-5)
    assert m["rewards/rejected"] == pytest.approx(logged["rewards/rejected"], abs=1e-5)
    assert m["rewards/margin"] == pytest.approx(logged["rewards/margins"], abs=1e-5)
    wrong = kto_loss(policy_logps, ref_logps, labels, policy_kl, ref_kl, beta=beta,
                     desirable_weight=desirable * 1.2, undesirable_weight=undesirable)
    assert abs(float(wrong.loss) - float(trl_loss)) > 1e-4


def test_completion_logps_sum_only_completion_tokens_whatever_the_padding(models):
    policy, _ = models
    prompts, chosen, _ = pairs(3, seed=3)
    together = completion_logps(policy, pack_sequences(prompts, chosen, PAD))
    for i in range(3):  # each row alone, with no padding at all
        alone = completion_logps(policy, pack_sequences(prompts[i:i + 1], chosen[i:i + 1], PAD))
        torch.testing.assert_close(together.summed[i], alone.summed[0], **TOL)
        assert int(together.tokens[i]) == len(chosen[i])
        assert int(together.sequence_tokens[i]) == len(prompts[i]) + len(chosen[i]) - 1
    # The sum is over the completion: log p(completion | prompt) by the chain rule, token by token.
    ids = torch.tensor([prompts[0] + chosen[0]])
    with torch.no_grad():
        logits = policy(input_ids=ids).logits[0].log_softmax(-1)
    by_hand = sum(float(logits[len(prompts[0]) + k - 1, t]) for k, t in enumerate(chosen[0]))
    assert float(together.summed[0]) == pytest.approx(by_hand, abs=1e-4)


def test_a_prepared_preference_dataset_encodes_to_pairs_that_share_their_prompt_ids(tmp_path):
    rows = [{"prompt": "Name a colour.", "chosen": "Red.", "rejected": "A purple one."},
            {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: Goodbye.",
             "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant: No."}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ws = Workspace.open(tmp_path / "ws")
    ds = prepare(DataConfig(inputs=[str(tmp_path / "p.jsonl")], task="preference", tokenizer="char",
                            splits={"val": 0, "test": 0}), ws, Registry.for_workspace(ws.root))
    tok = AutoTokenizer.from_pretrained(str(ds.tokenizer_dir))
    for rec in ds.records("train"):
        prompt_c, chosen = encode_completion(tok, rec["prompt"], rec["chosen"], 512)
        prompt_r, rejected = encode_completion(tok, rec["prompt"], rec["rejected"], 512)
        assert prompt_c == prompt_r
        assert tok.decode(prompt_c + chosen) == tok.bos_token + tok.apply_chat_template(  # bos first, as in SFT
            [*rec["prompt"], {"role": "assistant", "content": rec["chosen"]}], tokenize=False)
        assert tok.decode(chosen).startswith(rec["chosen"])  # the answer, then the template's end of turn
        assert tok.decode(prompt_c).endswith(tok.apply_chat_template(rec["prompt"], tokenize=False,
                                                                      add_generation_prompt=True)[-12:])
    assert encode_completion(tok, rec["prompt"], rec["chosen"], len(prompt_c)) is None  # nothing of the answer left
    assert encode_completion(tok, rec["prompt"], rec["chosen"], len(prompt_c) + 2) == (prompt_c, chosen[:2])


def test_completion_logps_of_our_own_llama_equal_the_hugging_face_ones(models, tmp_path):
    # The fast LoRA path trains llmkit's Llama (hidden_states + lm_head), not the HF model.
    hf = models[0]
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = from_hf_folder(tmp_path).eval()
    prompts, chosen, _ = pairs(3, seed=4)
    batch = pack_sequences(prompts, chosen, PAD)
    with torch.no_grad():
        theirs_logps, ours_logps = completion_logps(hf, batch), completion_logps(ours, batch)
    torch.testing.assert_close(ours_logps.summed, theirs_logps.summed, **TOL)
    torch.testing.assert_close(ours_logps.sequence_summed, theirs_logps.sequence_summed, **TOL)


def test_a_negative_kto_kl_estimate_is_clamped_to_zero():
    """z = max(0, mean(policy_kl - ref_kl)): with mismatched pairs the policy finds less likely than the reference
    does, the baseline is 0 and each row's loss is 1 - sigmoid(beta r) (desirable) or 1 - sigmoid(-beta r)."""
    policy, ref = torch.tensor([-3.0, -5.0, -4.0, -2.0]), torch.tensor([-4.0, -4.0, -6.0, -1.0])
    labels = torch.tensor([True, False, True, False])
    policy_kl, ref_kl = torch.tensor([-9.0, -8.0, -7.0, -9.0]), torch.tensor([-5.0, -6.0, -5.0, -6.0])
    out = kto_loss(policy, ref, labels, policy_kl, ref_kl, beta=0.5, desirable_weight=1.5, undesirable_weight=0.5)
    assert float(out.extra["kl"]) == 0.0
    r = (policy - ref).tolist()
    expected = [1.5 * (1 - torch.sigmoid(torch.tensor(0.5 * r[0]))), 0.5 * (1 - torch.sigmoid(torch.tensor(-0.5 * r[1]))),
                1.5 * (1 - torch.sigmoid(torch.tensor(0.5 * r[2]))), 0.5 * (1 - torch.sigmoid(torch.tensor(-0.5 * r[3])))]
    assert float(out.loss) == pytest.approx(float(sum(expected)) / 4, abs=1e-6)
