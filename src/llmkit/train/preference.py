"""`llmkit train dpo | orpo | kto`: tune a causal LM on preferences, on the shared training loop.

A preference dataset (`data prepare --task preference`, `data from-feedback --task preference`) holds pairs
(a prompt, a chosen and a rejected answer) and rated answers (a prompt, an answer, desirable or not).
DPO and ORPO train on the pairs; KTO on rated answers, a pair counting as one of each (as TRL unpairs them).
Prompt and answer are rendered with the base's chat template exactly as SFT renders a conversation, so
the answer starts where generation starts at inference.

The reference model (DPO, KTO) is the model before its first step: its log-probabilities are computed once,
over every train and val answer, before training. Under LoRA that is the base with the adapters adding
zero (peft's B starts at zero); for full tuning it is the base itself. So no second copy of the model is
kept in memory and no reference forward runs per step (TRL's `precompute_ref_log_probs`); a resumed run
computes them before its checkpoint is loaded, from the same starting weights.

Logged per step beside the loss: chosen and rejected rewards, their margin and (pairs) the share of pairs
whose chosen reward is higher; evaluations report the same on the val split.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch

from llmkit.config import DpoConfig, KtoConfig, OrpoConfig, PreferenceConfig
from llmkit.data.dataset import open_dataset
from llmkit.errors import UserError
from llmkit.models.io import Model
from llmkit.models.naming import output_name
from llmkit.registry import Registry
from llmkit.train.checkpoint import resume_run, tracks_runs
from llmkit.train.finetune import FinetuneJob, eval_source, fit
from llmkit.train.optim import autocast, resolve_precision
from llmkit.train.preference_loss import (
    completion_logps,
    dpo_loss,
    encode_completion,
    kto_loss,
    orpo_loss,
    pack_sequences,
)
from llmkit.train.tuned_model import open_base, register_tuned
from llmkit.workspace import Workspace

LOSSES = ("dpo", "orpo", "kto")
CONFIG_OF_LOSS = {"dpo": DpoConfig, "orpo": OrpoConfig, "kto": KtoConfig}


@dataclass
class Scored:
    """One answer to one prompt, as token ids, with the reference's summed log-prob of the answer."""

    prompt: list[int]
    answer: list[int]
    ref: float = 0.0


@dataclass
class PairExample:
    chosen: Scored
    rejected: Scored


@dataclass
class RatedExample:
    answer: Scored
    desirable: bool
    mismatched: Scored | None = None  # the prompt with another record's answer: KTO's KL estimate


@tracks_runs
def preference_tune(cfg: PreferenceConfig, loss: str, ws: Workspace | None = None, registry: Registry | None = None,
                    console=None, stop_at_step: int | None = None) -> Model:
    """Train `cfg.base` with the `loss` (dpo | orpo | kto) on `cfg.data`; register and return the tuned model."""
    if loss not in LOSSES:
        raise UserError(f"loss {loss!r} is not one of {', '.join(LOSSES)}: preference_tune(DpoConfig(...), \"dpo\")")
    cfg = CONFIG_OF_LOSS[loss].given(cfg, f'llmkit.train.preference.preference_tune(..., "{loss}")')
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    cfg, run_dir, run_id = resume_run(cfg, loss, registry)
    ds = _preference_dataset(registry, cfg.data, loss)
    opened = open_base(cfg, loss, registry, console)
    base, model, tokenizer, path, pad_id, device = (opened.base, opened.model, opened.tokenizer, opened.path,
                                                    opened.pad_id, opened.device)

    where = str(ds.records_file("train"))
    train, counts = encode_records(tokenizer, ds.records("train"), loss, cfg.max_length, cfg.skip_bad, where)
    if not train:
        raise UserError(f"no usable training example in {ds.ref} ({counts}); raise --max-length")
    eval_split, eval_records = ds.eval_records()
    val, val_counts = encode_records(tokenizer, eval_records, loss, cfg.max_length, True,
                                     str(ds.records_file(eval_split)), pairs_required=False)
    if cfg.eval_max_examples:
        val = val[: cfg.eval_max_examples]
    if not val:
        raise UserError(_nothing_to_evaluate(ds, loss, eval_split, val_counts))
    precision = resolve_precision(cfg.precision, device)
    if loss != "orpo":  # ORPO has no reference
        if console is not None:
            console.print(f"reference log-probabilities of {len(train) + len(val)} examples (the model before training)")
        score_reference(model, train + val, cfg.batch_size, pad_id, device, precision)
    if console is not None:
        left_out = counts["skipped"] - counts["unpaired"]
        unpaired = (f"{counts['unpaired']} rated answers left out ({loss.upper()} learns from pairs; "
                    "'llmkit train kto' takes them), " if counts["unpaired"] else "")
        console.print(f"data {ds.ref}: {len(train)} {'pairs' if loss != 'kto' else 'rated answers'} "
                      f"({unpaired}{left_out} skipped, {counts['truncated']} truncated to {cfg.max_length} tokens); "
                      f"{len(val)} for eval{eval_source(eval_split)}")

    step_loss = _loss_fn(loss, cfg, pad_id, device)

    @torch.no_grad()
    def evaluate(m) -> dict[str, float]:
        m.eval()
        totals: dict[str, list[float]] = {}  # figure -> [weighted sum, weight]: a batch may lack one (KTO, one label)
        for k in range(0, len(val), cfg.batch_size):
            batch = val[k: k + cfg.batch_size]
            value, _, figures = step_loss(m, batch)
            for key, x in {"loss": float(value), **figures}.items():
                total = totals.setdefault(key, [0.0, 0])
                total[0], total[1] = total[0] + x * len(batch), total[1] + len(batch)
        out = {f"val_{k.replace('rewards/', 'reward_')}": s / n for k, (s, n) in totals.items()}
        if "val_reward_chosen" in out and "val_reward_rejected" in out:
            out["val_reward_margin"] = out["val_reward_chosen"] - out["val_reward_rejected"]
        return out | {"val_examples": len(val)}

    def epoch_batches(epoch: int) -> list[list]:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
        return [[train[i] for i in order[k: k + cfg.batch_size]] for k in range(0, len(order), cfg.batch_size)]

    name = output_name(loss, cfg.name, f"{base.name.split('/')[-1]}-{ds.name}-{loss}")
    parents = [(ds.id, "trained_on")] + ([(base.id, "base_model")] if base.id else [])
    job = FinetuneJob(loss, name, model, epoch_batches, step_loss, evaluate, score="val_loss", parents=parents,
                      info={"method": cfg.method, "loss": loss, "beta": cfg.beta, "train_examples": len(train),
                            "skipped": counts["skipped"], "truncated": counts["truncated"], "path": path})
    fitted = fit(job, cfg, loss, ws, registry, run_dir, run_id, console, stop_at_step)

    if console is not None:
        s = fitted.summary
        accuracy = f", reward accuracy {s['val_reward_accuracy']:.3f}" if "val_reward_accuracy" in s else ""
        # KTO's margin needs desirable and undesirable answers in val: with one kind only there is none (it printed nan)
        margin = (f"reward margin {s['val_reward_margin']:.3f}" if "val_reward_margin" in s
                  else "no reward margin (val holds answers of one rating only)")
        # The registered weights are the best evaluation's, which need not be the last one's
        best = f" (the registered weights: step {s['best_step']} of {s['steps']})" if s.get("best_step") else ""
        console.print(f"val loss {s['val_loss']:.4f}, {margin}{accuracy}{best}; {s['seconds']:.1f}s")
    return register_tuned(fitted, cfg, opened, ds, name, parents, ws, registry, console, tuning=loss)


def _preference_dataset(registry: Registry, ref: str | None, loss: str):
    if not ref:
        raise UserError(f"{loss}.data is not set: pass --data NAME (a dataset from 'llmkit data prepare --task preference' "
                        "or 'llmkit data from-feedback --task preference')")
    ds = open_dataset(registry, ref)
    if ds.kind != "preference":
        raise UserError(f"dataset {ds.ref} is a '{ds.kind}' dataset; {loss.upper()} needs one prepared with --task preference")
    return ds


def encode_records(tokenizer, records: list[dict[str, Any]], loss: str, max_length: int, skip_bad: bool,
                   where: str, pairs_required: bool = True) -> tuple[list, dict[str, int]]:
    """Pairs (dpo, orpo) or rated answers (kto) of the records, and counts of what was skipped and truncated.

    DPO and ORPO need pairs: a rated answer alone is skipped (counted). KTO takes both, a pair as one
    desirable and one undesirable answer. Its mismatched answers (for the KL estimate) are each example's
    predecessor's, rolled once over the whole split (TRL rolls within batches of its dataset map), fixed
    before shuffling so the reference's log-probs of them can be computed once.
    """
    examples: list = []
    counts = {"records": len(records), "skipped": 0, "truncated": 0, "unpaired": 0}
    for n, rec in enumerate(records, 1):
        if "chosen" in rec:
            chosen = _encode(tokenizer, rec["prompt"], rec["chosen"], max_length, counts)
            rejected = _encode(tokenizer, rec["prompt"], rec["rejected"], max_length, counts)
            if chosen is None or rejected is None:
                _skip(skip_bad, where, n, f"the prompt takes all of the {max_length} tokens", counts)
            elif loss == "kto":
                examples += [RatedExample(chosen, True), RatedExample(rejected, False)]
            else:
                examples.append(PairExample(chosen, rejected))
        elif loss == "kto":
            answer = _encode(tokenizer, rec["prompt"], rec["completion"], max_length, counts)
            if answer is None:
                _skip(skip_bad, where, n, f"the prompt takes all of the {max_length} tokens", counts)
            else:
                examples.append(RatedExample(answer, bool(rec["label"])))
        else:
            counts["unpaired"] += 1
            counts["skipped"] += 1
    if loss == "kto":
        for example, other in zip(examples, examples[-1:] + examples[:-1], strict=True):
            example.mismatched = Scored(example.answer.prompt, other.answer.answer)
    elif counts["unpaired"] and not examples and pairs_required:
        raise UserError(f"{where}: {counts['unpaired']} rated answers and no pair; {loss.upper()} learns from pairs "
                        "(chosen over rejected): use 'llmkit train kto' for rated answers")
    return examples, counts


def _nothing_to_evaluate(ds, loss: str, split: str, counts: dict[str, int]) -> str:
    """Why there is nothing to evaluate on, and what to do. A preference dataset from feedback mixes pairs and rated
    answers, and its held-out prompts can all be rated answers: DPO and ORPO then have no held-out pair."""
    if not counts["records"]:
        # Every record of one prompt goes to one split: a held-out split needs records on more prompts than one
        prompts = len({json.dumps(r["prompt"], sort_keys=True) for r in ds.records("train")})
        return (f"dataset {ds.ref} has no val or test records to evaluate on: its train records cover {prompts} "
                f"prompt{'s' if prompts != 1 else ''}, and the records of one prompt stay in one split; make it again "
                "with a val split (llmkit data from-feedback ... --val 0.2, or llmkit data prepare ... --splits-val 0.2), "
                "which holds out about one prompt in five" + (", once there is feedback on more prompts" if prompts < 5 else ""))
    if counts["unpaired"] == counts["records"]:
        return (f"{ds.records_file(split)}: the {split} split holds {counts['unpaired']} rated answers and no pair, and "
                f"{loss.upper()} is evaluated on held-out pairs; make the dataset again holding out more prompts "
                "(llmkit data from-feedback ... --val 0.3, or llmkit data prepare ... --splits-val 0.3: records of one "
                "prompt stay together), or train kto, which learns from rated answers")
    unpaired = f"{counts['unpaired']} rated answers without a pair, " if counts["unpaired"] else ""
    return (f"{ds.records_file(split)}: none of the {counts['records']} {split} records can be evaluated ({unpaired}"
            f"{counts['skipped'] - counts['unpaired']} whose prompt takes all of --max-length); raise --max-length")


def _encode(tokenizer, prompt: list[dict[str, str]], answer: str, max_length: int, counts: dict[str, int]) -> Scored | None:
    ids = encode_completion(tokenizer, prompt, answer, max_length)
    if ids is None:
        return None
    whole = encode_completion(tokenizer, prompt, answer, 1 << 62)
    counts["truncated"] += whole is not None and len(whole[1]) > len(ids[1])
    return Scored(*ids)


def _skip(skip_bad: bool, where: str, n: int, why: str, counts: dict[str, int]) -> None:
    if not skip_bad:
        raise UserError(f"{where}:{n}: {why}, leaving no room for the answer; raise --max-length or pass --skip-bad to skip it")
    counts["skipped"] += 1


def _answers(examples: list) -> list[Scored]:
    """Every Scored of the examples, in a fixed order (what the reference scores)."""
    out: list[Scored] = []
    for e in examples:
        if isinstance(e, PairExample):
            out += [e.chosen, e.rejected]
        else:
            out += [e.answer] + ([e.mismatched] if e.mismatched is not None else [])
    return out


@torch.no_grad()
def score_reference(model, examples: list, batch_size: int, pad_id: int, device: str, precision: str) -> None:
    """Fill in `ref` of every answer with the model's summed log-prob of it, as it is now (before training)."""
    was_training = model.training
    model.eval()
    answers = _answers(examples)
    rows = 2 * batch_size
    with autocast(precision, device):
        for k in range(0, len(answers), rows):
            chunk = answers[k: k + rows]
            batch = pack_sequences([a.prompt for a in chunk], [a.answer for a in chunk], pad_id, device)
            for answer, value in zip(chunk, completion_logps(model, batch, whole=False).summed.tolist(), strict=True):
                answer.ref = value
    model.train(was_training)


def _loss_fn(loss: str, cfg: PreferenceConfig, pad_id: int, device: str):
    """(model, batch of examples) -> (loss, answer tokens, logged figures) for the loop and the evaluation."""

    def sequences(answers: list[Scored]):
        return pack_sequences([a.prompt for a in answers], [a.answer for a in answers], pad_id, device)

    def refs(answers: list[Scored]) -> torch.Tensor:
        return torch.tensor([a.ref for a in answers], dtype=torch.float32, device=device)

    def pairs(model, batch: list[PairExample]):
        answers = [e.chosen for e in batch] + [e.rejected for e in batch]
        logps = completion_logps(model, sequences(answers), whole=loss == "orpo")
        n = len(batch)
        if loss == "dpo":
            out = dpo_loss(logps.summed[:n], logps.summed[n:], refs(answers[:n]), refs(answers[n:]), cfg.beta)
            if cfg.sft_weight:  # mean next-token loss over the chosen answers' tokens, as TRL's "sft" loss type
                nll = -logps.summed[:n].sum() / logps.tokens[:n].sum().clamp(min=1)
                out.loss = out.loss + cfg.sft_weight * nll
                out.extra = {"nll": nll.detach()}
        else:
            chosen, rejected = logps.select(slice(0, n)), logps.select(slice(n, None))
            out = orpo_loss(chosen.mean, rejected.mean, chosen.nll(), lam=cfg.beta)
        return out, int(logps.tokens.sum())

    def rated(model, batch: list[RatedExample]):
        answers = [e.answer for e in batch]
        logps = completion_logps(model, sequences(answers), whole=False)
        with torch.no_grad():  # the KL estimate is a baseline: no gradient flows through it (as in TRL)
            kl = completion_logps(model, sequences([e.mismatched for e in batch]), whole=False).summed
        labels = torch.tensor([e.desirable for e in batch], device=device)
        out = kto_loss(logps.summed, refs(answers), labels, kl, refs([e.mismatched for e in batch]), cfg.beta,
                       cfg.desirable_weight, cfg.undesirable_weight)
        return out, int(logps.tokens.sum())

    def step(model, batch):
        out, tokens = (rated if loss == "kto" else pairs)(model, batch)
        figures = {k: v for k, v in out.metrics().items() if k != "loss" and math.isfinite(v)}
        return out.loss, tokens, figures

    return step
