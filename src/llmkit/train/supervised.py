"""`llmkit train sft`: supervised fine-tuning of a causal LM on a chat dataset.

Each conversation is rendered with the tokenizer's chat template (llmkit's own when the base has
none) one turn at a time, so every token is known to belong to a system, user or assistant turn;
the loss covers assistant tokens only. Methods: full, LoRA (adapters on a frozen base), QLoRA
(adapters on a 4-bit base; needs CUDA and bitsandbytes). Llama-family bases train on the fast path
(train.fast_lora: our fused Llama, bf16 frozen base, chunked loss); others through transformers + peft.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

import llmkit.train.fast_lora as fast_lora
from llmkit.config import SftConfig
from llmkit.data.dataset import open_dataset
from llmkit.errors import UserError
from llmkit.models.io import Model
from llmkit.models.naming import output_name
from llmkit.registry import Registry
from llmkit.train.checkpoint import resume_run, tracks_runs
from llmkit.train.finetune import FinetuneJob, eval_source, fit
from llmkit.train.memory import lean_allocator
from llmkit.train.tuned_model import TuningBase, open_base, register_tuned
from llmkit.workspace import Workspace

IGNORE = -100  # label of tokens the loss skips (prompt, system, padding)


@dataclass
class ChatExample:
    ids: list[int]
    labels: list[int]   # the token id where the loss applies (assistant tokens), IGNORE elsewhere
    positions: list[int] | None = None  # packed rows: each conversation's positions count from its own start


def encode_chat(tokenizer, messages: list[dict[str, str]], max_length: int) -> tuple[ChatExample | None, bool]:
    """Tokens and labels of one conversation, and whether it was truncated.

    Turn i's tokens are the difference between the template rendered up to turn i and up to turn
    i-1 (for an assistant turn: after the generation prompt), tokenized piece by piece, so the
    prompt/reply boundary is exactly where generation starts at inference. None when no assistant
    token survives truncation.
    """
    ids: list[int] = []
    labels: list[int] = []
    bos = tokenizer.bos_token_id
    if bos is not None:
        ids.append(bos)
        labels.append(IGNORE)
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            _append(tokenizer, prompt, rendered, ids, labels, learn=False)
            rendered = prompt
        text = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        _append(tokenizer, text, rendered, ids, labels, learn=message["role"] == "assistant")
        rendered = text
    truncated = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return None, truncated
    return ChatExample(ids, labels), truncated


def _append(tokenizer, text: str, rendered: str, ids: list[int], labels: list[int], learn: bool) -> None:
    if not text.startswith(rendered):
        raise UserError("the tokenizer's chat template does not render conversations turn by turn (a longer "
                        "conversation changes the text of earlier turns), so assistant tokens cannot be located")
    piece = text[len(rendered):]
    if bos_text := (tokenizer.bos_token if not rendered and tokenizer.bos_token_id is not None else None):
        piece = piece.removeprefix(bos_text)  # templates that write bos themselves: it is already in ids
    new = tokenizer(piece, add_special_tokens=False)["input_ids"]
    ids.extend(new)
    labels.extend(new if learn else [IGNORE] * len(new))


def chat_dataset(registry: Registry, ref: str | None, key: str):
    if not ref:
        raise UserError(f"{key} is not set: pass --data NAME (a dataset from 'llmkit data prepare --task chat')")
    ds = open_dataset(registry, ref)
    if ds.kind != "chat":
        raise UserError(f"dataset {ds.ref} is a '{ds.kind}' dataset; SFT needs one prepared with --task chat")
    return ds


def encode_split(tokenizer, records: list[dict], max_length: int, skip_bad: bool, where: str) -> tuple[list[ChatExample], dict[str, int]]:
    examples, counts = [], {"records": len(records), "no_assistant": 0, "truncated": 0, "empty_after_truncation": 0}
    for n, rec in enumerate(records, 1):
        messages = rec.get("messages") or []
        if not any(m.get("role") == "assistant" for m in messages):
            if not skip_bad:
                raise UserError(f"{where}:{n}: conversation has no assistant turn, so there is nothing to learn; "
                                "pass --skip-bad to skip such records")
            counts["no_assistant"] += 1
            continue
        example, truncated = encode_chat(tokenizer, messages, max_length)
        if example is None:
            counts["empty_after_truncation"] += 1
            continue
        counts["truncated"] += truncated  # of the conversations kept (a skipped one is said once, as skipped)
        examples.append(example)
    return examples, counts


def pack(examples: list[ChatExample], max_length: int) -> list[ChatExample]:
    """Concatenate examples into rows of max_length (the last row shorter). Each row carries positions that
    restart at every conversation, so attention stays inside a conversation (`Llama.document_mask`;
    transformers reads the same position_ids the same way); a conversation cut at a row's end goes on in
    the next row with its positions counting on."""
    rows, ids, labels, positions = [], [], [], []
    for ex in examples:
        ids.extend(ex.ids)
        labels.extend(ex.labels)
        positions.extend(range(len(ex.ids)))
        while len(ids) >= max_length:
            rows.append(ChatExample(ids[:max_length], labels[:max_length], positions[:max_length]))
            ids, labels, positions = ids[max_length:], labels[max_length:], positions[max_length:]
    if any(label != IGNORE for label in labels):
        rows.append(ChatExample(ids, labels, positions))
    return rows


def collate(examples: list[ChatExample], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):  # right padding: positions stay 0..n-1
        ids[row, : len(ex.ids)] = torch.tensor(ex.ids)
        labels[row, : len(ex.labels)] = torch.tensor(ex.labels)
        mask[row, : len(ex.ids)] = 1
    if examples[0].positions is None:
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
    # Packed rows: position_ids instead of an attention mask (a mask would hide the documents from transformers);
    # padding counts on from the row's last position, as part of its last document, after every real token.
    positions = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.positions)
        positions[row, :n] = torch.tensor(ex.positions)
        positions[row, n:] = torch.arange(width - n) + (ex.positions[-1] + 1 if n else 0)
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def shuffled_batches(items: list, batch_size: int, seed: int, epoch: int, collate_fn) -> list:
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [collate_fn([items[i] for i in order[k: k + batch_size]]) for k in range(0, len(order), batch_size)]


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over labelled tokens, and their count."""
    if "position_ids" in batch:  # packed rows: transformers keeps attention within each document (with no cache)
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1]                     # (B, T-1, V): position t predicts t+1
    target = batch["labels"][:, 1:]                 # (B, T-1)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return loss, int((target != IGNORE).sum())


@dataclass
class SftSetup:
    """Everything an SFT run needs before its first step: what `sft` trains and `estimate` probes."""

    cfg: SftConfig
    ws: Workspace
    registry: Registry
    run_dir: Any
    run_id: str | None
    opened: TuningBase   # the base, the module to train, its tokenizer and path ("fast" or "peft")
    dataset: Any
    job: FinetuneJob

    @property
    def path(self) -> str:
        return self.opened.path


def prepare_sft(cfg: SftConfig, ws: Workspace | None = None, registry: Registry | None = None, console=None) -> SftSetup:
    cfg = SftConfig.given(cfg, "llmkit.train.sft")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    cfg, run_dir, run_id = resume_run(cfg, "sft", registry)
    ds_rec = chat_dataset(registry, cfg.data, "sft.data")
    if cfg.lean_memory and not lean_allocator() and console is not None:
        console.print("--lean-memory needs glibc's malloc; not applied")
    opened = open_base(cfg, "sft", registry, console)
    lm, tokenizer, pad_id, device = opened.model, opened.tokenizer, opened.pad_id, opened.device

    train, rows, val, train_counts = _examples(cfg, ds_rec, tokenizer, console)
    loss_sum = fast_lora.token_loss_sum if opened.path == "fast" else token_loss_sum
    lm.train()

    def loss_fn(model, batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        total, n = loss_sum(model, batch)
        return total / max(n, 1), n

    val_batches = [collate(val[k: k + cfg.batch_size], pad_id) for k in range(0, len(val), cfg.batch_size)]

    @torch.no_grad()
    def evaluate(model) -> dict[str, float]:
        model.eval()
        total, count = 0.0, 0
        # eager even when the blocks are compiled: without gradients and at the val batches' own lengths each would
        # be a new graph to compile, for a few batches (a 200-step run spent more compiling its evaluations than them)
        with torch.compiler.set_stance("force_eager"):
            for batch in val_batches:
                loss, n = loss_sum(model, {k: v.to(device) for k, v in batch.items()})
                total, count = total + float(loss), count + n
        mean = total / max(count, 1)
        return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50.0))}

    base = opened.base
    name = output_name("sft", cfg.name, f"{base.name.split('/')[-1]}-{ds_rec.name}-sft")
    parents = [(ds_rec.id, "trained_on")] + ([(base.id, "base_model")] if base.id else [])
    job = FinetuneJob("sft", name, lm, lambda epoch: shuffled_batches(rows, cfg.batch_size, cfg.seed, epoch, lambda xs: collate(xs, pad_id)),
              loss_fn, evaluate, score="val_loss", parents=parents,
              info={"method": cfg.method, "train_examples": len(train), "skipped": train_counts["no_assistant"] + train_counts["empty_after_truncation"],
                    "truncated": train_counts["truncated"], "path": opened.path})
    if opened.path == "fast":
        def prepare(steps: int, precision: str) -> None:
            job.info["compiled"] = fast_lora.compile_if_it_pays(lm, cfg, steps, precision, console)
        job.prepare = prepare
    return SftSetup(cfg, ws, registry, run_dir, run_id, opened, ds_rec, job)


@tracks_runs
def sft(cfg: SftConfig, ws: Workspace | None = None, registry: Registry | None = None, console=None,
        stop_at_step: int | None = None) -> Model:
    setup = prepare_sft(cfg, ws, registry, console)
    fitted = fit(setup.job, setup.cfg, "sft", setup.ws, setup.registry, setup.run_dir, setup.run_id, console, stop_at_step)
    if console is not None:
        s = fitted.summary
        console.print(f"val loss {s['val_loss']:.4f} (perplexity {s['val_ppl']:.2f}); {s['trainable_parameters']:,} trainable of "
                      f"{s['total_parameters']:,} parameters; peak memory {s['peak_memory_mb']:.0f} MiB; {s['seconds']:.1f}s")
    return register_tuned(fitted, setup.cfg, setup.opened, setup.dataset, setup.job.name, setup.job.parents, setup.ws,
                          setup.registry, console)


def _examples(cfg: SftConfig, ds_rec, tokenizer, console):
    """The encoded train conversations (and the rows they pack into) and the val ones, with counts."""
    train, train_counts = encode_split(tokenizer, ds_rec.records("train"), cfg.max_length, cfg.skip_bad,
                                       str(ds_rec.records_file("train")))
    eval_split, val_records = ds_rec.eval_records()
    val, _ = encode_split(tokenizer, val_records, cfg.max_length, True, str(ds_rec.records_file("val")))
    if not train:
        raise UserError(f"no usable training conversation in {ds_rec.ref} ({train_counts}); raise --max-length")
    if not val:
        raise UserError(f"dataset {ds_rec.ref} has no val or test conversations to evaluate on; prepare it again with a val split (llmkit data prepare ... --splits-val 0.2)")
    if cfg.eval_max_examples:
        val = val[: cfg.eval_max_examples]
    rows = pack(train, cfg.max_length) if cfg.packing else train
    if console is not None:
        why = [f"{train_counts['no_assistant']} with no assistant turn"] if train_counts["no_assistant"] else []
        if train_counts["empty_after_truncation"]:  # the prompt alone filled max_length: nothing left to learn from
            why.append(f"{train_counts['empty_after_truncation']} whose answers start after {cfg.max_length} tokens "
                       "(raise --max-length to keep them)")
        skipped = f"skipped {'; '.join(why)}; " if why else ""
        console.print(f"data {ds_rec.ref}: {len(train)} conversations ({skipped}{train_counts['truncated']} truncated "
                      f"to {cfg.max_length} tokens){f', packed into {len(rows)} rows' if cfg.packing else ''}; {len(val)} for eval{eval_source(eval_split)}",
                      markup=False, highlight=False)
    return train, rows, val, train_counts
