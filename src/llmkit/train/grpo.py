"""`llmkit train grpo`: reinforcement learning of a causal LM from a reward computed by code (GRPO).

Each step takes `batch_size` prompts, samples `group_size` answers to each from the policy as it is now
(train.rollouts: the fast decoder), scores them (train.rewards) and normalises each reward against its own
group, (r - mean) / (std + 1e-4): the advantage, so no value model is needed. The loss per answer token is

    -min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A) + beta * KL

with ratio = pi / pi_old (1 in value: one update per sampled batch, so its gradient is A's policy gradient;
the clip is there for the formula's sake and for gradient accumulation), and KL the k3 estimate
exp(ref - logp) - (ref - logp) - 1 against the reference: the base with the adapters switched off under
LoRA (no second copy), a frozen copy under full tuning. Token-level normalisation (all answer tokens of the
step weigh the same, DAPO's choice) keeps long answers from being favoured or punished for their length.

Prompts come from a chat dataset: each conversation up to its last assistant turn is the prompt, that
turn is the reference answer the `number` reward compares with, and the whole record goes to a user's
reward function. Logged per step: mean reward, the spread of rewards within groups, KL, answer length;
samples go to the run's samples.jsonl; evaluations answer the val prompts greedily (val_reward), before
training too, and the run's plots/rewards.png shows reward and KL curves.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from llmkit.config import GrpoConfig
from llmkit.data.dataset import open_dataset
from llmkit.errors import UserError
from llmkit.generate import END_OF_TURN
from llmkit.models.io import Model
from llmkit.models.naming import output_name
from llmkit.registry import Registry
from llmkit.runtime.decoder import eos_set
from llmkit.train.checkpoint import resume_run, start_run, tracks_runs
from llmkit.train.chunked_loss import linear_token_logps
from llmkit.train.finetune import FinetuneJob, eval_source, fit
from llmkit.train.preference_loss import pack_sequences, token_logps
from llmkit.train.reward_plots import plot_rewards
from llmkit.train.rewards import reference_answer, resolve_reward, score
from llmkit.train.rollouts import Sampler
from llmkit.train.tuned_model import open_base, register_tuned
from llmkit.workspace import Workspace


@dataclass
class Prompt:
    ids: list[int]             # rendered with the chat template, ending with the generation prompt
    text: str                  # the last user turn: what a reward function sees as the prompt
    record: dict[str, Any]


@tracks_runs
def grpo(cfg: GrpoConfig, ws: Workspace | None = None, registry: Registry | None = None, console=None,
         stop_at_step: int | None = None) -> Model:
    cfg = GrpoConfig.given(cfg, "llmkit.train.grpo.grpo")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    cfg, run_dir, run_id = resume_run(cfg, "grpo", registry)
    reward = resolve_reward(cfg)
    if not cfg.data:
        raise UserError("grpo.data is not set: pass --data NAME (a chat dataset: each conversation up to its last "
                        "assistant turn is a prompt, that turn the reference answer)")
    ds = open_dataset(registry, cfg.data)
    if ds.kind != "chat":
        raise UserError(f"dataset {ds.ref} is a '{ds.kind}' dataset; GRPO reads prompts from one prepared with --task chat")
    opened = open_base(cfg, "grpo", registry, console)
    base, model, tokenizer, path, pad_id, device = (opened.base, opened.model, opened.tokenizer, opened.path,
                                                    opened.pad_id, opened.device)
    config = getattr(model, "config", None) or model.model.config  # HF / peft module, or our Llama under LoRA
    longest = min(cfg.max_length, getattr(config, "max_position_embeddings", None) or cfg.max_length)
    room = longest - cfg.max_new_tokens
    if room < 1:
        raise UserError(f"grpo.max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in {longest} tokens (the "
                        "smaller of --max-length and the base's context); lower --max-new-tokens")
    train, skipped = encode_prompts(tokenizer, ds.records("train"), room)
    eval_split, eval_records = ds.eval_records()
    val, _ = encode_prompts(tokenizer, eval_records, room)
    if not train:
        raise UserError(f"no usable prompt in {ds.ref} ({skipped} longer than {room} tokens or without a user turn); "
                        "raise --max-length (up to the base's context) or lower --max-new-tokens")
    if not val:
        raise UserError(f"dataset {ds.ref} has no val or test conversations to evaluate on; prepare it again with a val split (llmkit data prepare ... --splits-val 0.2)")
    val = val[: cfg.eval_max_examples or None]
    for p in train[:8]:  # the reward runs on the reference answers now: a broken one stops before anything is registered
        score(reward, p.text, reference_answer(p.record), p.record, cfg.reward)

    sampler = Sampler(model, base, path, cfg.method, cfg.lora.alpha / cfg.lora.r)
    eos = eos_set(tokenizer.eos_token_id) | {i for t in END_OF_TURN if (i := tokenizer.convert_tokens_to_ids(t)) is not None
                                             and i != tokenizer.unk_token_id}
    reference = _reference(model, path, cfg)

    def answer(prompts: list[Prompt], n: int, temperature: float) -> tuple[list[list[int]], list[str], torch.Tensor]:
        ids = sampler.sample([p.ids for p in prompts], n, cfg.max_new_tokens, temperature, eos)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        rewards = [score(reward, p.text, t, p.record, cfg.reward) for p, t in zip([p for p in prompts for _ in range(n)], texts, strict=True)]
        return ids, texts, torch.tensor(rewards, dtype=torch.float32)

    name = output_name("grpo", cfg.name, f"{base.name.split('/')[-1]}-{ds.name}-grpo")
    parents = [(ds.id, "trained_on")] + ([(base.id, "base_model")] if base.id else [])
    if run_dir is None:
        run_dir, run_id = start_run(ws, registry, name, "grpo", cfg, parents)
    samples = run_dir / "samples.jsonl"

    def log_samples(kind: str, prompts: list[Prompt], n: int, texts: list[str], rewards: torch.Tensor, limit: int) -> None:
        with open(samples, "a", encoding="utf-8") as fh:
            for k in range(min(limit, len(texts))):
                fh.write(json.dumps({"kind": kind, "prompt": prompts[k // n].text, "answer": texts[k],
                                     "reward": float(rewards[k])}, ensure_ascii=False) + "\n")

    groups_seen = {"groups": 0, "flat": 0}  # groups whose answers all scored the same: advantage 0, nothing learnt

    def loss_fn(m, batch: list[Prompt]):
        ids, texts, rewards = answer(batch, cfg.group_size, cfg.temperature)
        log_samples("train", batch, cfg.group_size, texts, rewards, cfg.samples_logged)
        groups = rewards.view(len(batch), cfg.group_size)
        groups_seen["groups"] += len(batch)
        groups_seen["flat"] += int((groups.amax(1) == groups.amin(1)).sum())
        advantages = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).view(-1)
        seq = pack_sequences([p.ids for p in batch for _ in range(cfg.group_size)], ids, pad_id, device)
        logp, rows = _answer_logps(m, seq)                                     # (N,), (N,) row of each token
        adv = advantages.to(device)[rows]
        ratio = torch.exp(logp - logp.detach())
        clipped = torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip)
        per_token = -torch.min(ratio * adv, clipped * adv)
        kl = torch.zeros_like(logp)
        if reference is not None:
            with torch.no_grad(), reference() as ref_model:
                ref, _ = _answer_logps(ref_model, seq)
            kl = torch.exp(ref - logp) - (ref - logp) - 1
            per_token = per_token + cfg.beta * kl
        figures = {"reward": float(rewards.mean()), "reward_std": float(groups.std(1).mean()), "kl": float(kl.detach().mean()),
                   "answer_tokens": float(seq.completion_mask.sum()) / len(ids)}
        return per_token.sum() / max(len(logp), 1), len(logp), figures

    @torch.no_grad()
    def evaluate(m) -> dict[str, float]:
        ids, texts, rewards = answer(val, 1, 0.0)
        log_samples("val", val, 1, texts, rewards, cfg.samples_logged)
        return {"val_reward": float(rewards.mean()), "val_answer_tokens": sum(map(len, ids)) / len(ids)}

    before = evaluate(model)
    if console is not None:
        console.print(f"data {ds.ref}: {len(train)} prompts ({skipped} skipped), {len(val)} for eval{eval_source(eval_split)}; reward {cfg.reward}; "
                      f"val reward before training {before['val_reward']:.3f}")

    def epoch_batches(epoch: int) -> list[list[Prompt]]:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
        return [[train[i] for i in order[k: k + cfg.batch_size]] for k in range(0, len(order), cfg.batch_size)]

    job = FinetuneJob("grpo", name, model, epoch_batches, loss_fn, evaluate, score="val_reward", higher_is_better=True,
                      parents=parents, info={"method": cfg.method, "reward": cfg.reward, "val_reward_before": before["val_reward"],
                                             "train_prompts": len(train), "group_size": cfg.group_size, "path": path})
    fitted = fit(job, cfg, "grpo", ws, registry, run_dir, run_id, console, stop_at_step,
                 time_limit_s=cfg.max_minutes * 60 or None)
    plot_rewards(fitted.run_dir / "metrics.jsonl", fitted.run_dir / "plots" / "rewards.png", before["val_reward"])

    if console is not None:
        s = fitted.summary
        console.print(f"val reward {s['val_reward_before']:.3f} -> {s['val_reward']:.3f} (greedy answers to {len(val)} val "
                      f"prompts); {s['seconds']:.1f}s; curves in {fitted.run_dir / 'plots' / 'rewards.png'}")
        if groups_seen["flat"]:
            console.print(_no_signal(groups_seen["flat"], groups_seen["groups"], cfg))
    return register_tuned(fitted, cfg, opened, ds, name, parents, ws, registry, console, tuning="grpo")


def _no_signal(flat: int, groups: int, cfg: GrpoConfig) -> str:
    """Groups whose answers all scored the same have advantage 0 in every answer: they moved nothing (a run of
    only those ends at a loss of 0.0000 and the base's weights, and said nothing of it)."""
    share, who = ("every group", "the run") if flat == groups else (f"{flat} of {groups} groups", "those groups")
    return (f"warning: in {share} of {cfg.group_size} answers to a prompt, all answers got the same reward, so {who} "
            "taught the model nothing "
            "(GRPO learns from the differences within a group); a larger --group-size, a higher --temperature, or a "
            "reward that tells these answers apart gives it something to learn")


def encode_prompts(tokenizer, records: list[dict[str, Any]], room: int) -> tuple[list[Prompt], int]:
    """Each conversation up to its last assistant turn, rendered with the generation prompt; those longer than
    `room` tokens or without a user turn before it are skipped (counted)."""
    out, skipped = [], 0
    for rec in records:
        messages = rec.get("messages") or []
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=len(messages))
        head = messages[:last]
        users = [m["content"] for m in head if m.get("role") == "user"]
        if not users:
            skipped += 1
            continue
        ids = tokenizer.apply_chat_template(head, tokenize=True, add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        if len(ids) > room:
            skipped += 1
            continue
        out.append(Prompt(list(ids), users[-1], rec))
    return out, skipped


def _answer_logps(model, seq) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of every answer token (N,) and the row each belongs to (N,); on our own Llama through the chunked head."""
    mask = seq.completion_mask[:, 1:].bool()                                   # (R, T-1): position t predicts t + 1
    rows = mask.nonzero()[:, 0]
    targets = seq.input_ids[:, 1:][mask]
    if hasattr(model, "hidden_states") and hasattr(model, "lm_head"):
        hidden = model.hidden_states(seq.input_ids)[:, :-1][mask]             # (N, C)
        return linear_token_logps(hidden, model.lm_head.weight, targets), rows
    logits = model(input_ids=seq.input_ids, attention_mask=seq.attention_mask, use_cache=False).logits
    return token_logps(logits, seq.input_ids)[mask], rows


def _reference(model, path: str, cfg: GrpoConfig):
    """A factory of context managers that each give the reference model, or None when beta is 0 (no KL term,
    no reference forward). Under LoRA it is the policy with its adapters off; under full tuning a frozen copy
    made now, before the first step."""
    if cfg.beta == 0:
        return None
    if cfg.method == "lora":
        @contextmanager
        def adapters_off() -> Iterator[torch.nn.Module]:
            with model.adapters_off() if path == "fast" else model.disable_adapter():
                yield model

        return adapters_off
    frozen = copy.deepcopy(model).requires_grad_(False).eval()
    return lambda: nullcontext(frozen)
