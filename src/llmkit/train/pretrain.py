"""`llmkit train pretrain`: a Llama-architecture model trained from scratch on token shards.

Our own loop on plain PyTorch: AdamW, warm-up + cosine, gradient accumulation and clipping,
autocast, optional torch.compile, DDP/FSDP under torchrun; evaluation on the whole val split,
best weights kept, resumable checkpoints, and a registered Hugging Face model folder at the end.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import torch
import yaml

from llmkit.audit import canaries
from llmkit.config import PretrainConfig
from llmkit.data.shards import shard_dtype
from llmkit.errors import UserError
from llmkit.models.io import Model, save_llama_folder
from llmkit.models.llama import Llama
from llmkit.models.presets import count_parameters, model_fields, plain_config
from llmkit.registry import Registry
from llmkit.train import distributed
from llmkit.train.batches import TokenWindows
from llmkit.train.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    save_weights,
)
from llmkit.train.loop import (
    MetricsLog,
    StopFlag,
    evaluate_lm,
    lm_loss,
    plot_losses,
    progress_bar,
    read_metrics,
)
from llmkit.train.optim import adamw, autocast, lr_at, resolve_precision
from llmkit.workspace import Workspace, atomic_dir


class TrainingInterrupted(Exception):
    """Raised after the checkpoint on SIGINT/SIGTERM is written; carries how to resume."""

    def __init__(self, step: int, run_id: str):
        super().__init__(f"stopped at step {step}; continue with: llmkit train pretrain --resume {run_id}")
        self.step, self.run_id = step, run_id


def pretrain(cfg: PretrainConfig, ws: Workspace | None = None, registry: Registry | None = None,
             console=None, time_limit_s: float | None = None) -> Model:
    ws = ws or Workspace.open()
    registry = registry or Registry.for_workspace(ws.root)
    d = distributed.setup()
    try:
        return _pretrain(cfg, ws, registry, d, console, time_limit_s)
    finally:
        distributed.teardown(d)


def _resolve_run(cfg: PretrainConfig, ws: Workspace, registry: Registry) -> tuple[PretrainConfig, Path | None, str | None]:
    if not cfg.resume:
        return cfg, None, None
    path = Path(cfg.resume)
    rec = None if path.is_dir() else registry.find(cfg.resume, "run")
    if rec is not None:
        path = Path(rec.path)
    if not (path / "config.yaml").exists():
        raise UserError(f"train.resume = '{cfg.resume}': no run with that id, name or folder (llmkit ls runs lists them)")
    saved = PretrainConfig.model_validate(yaml.safe_load((path / "config.yaml").read_text())["train"])
    # The saved config is the run; only the step budget may grow on resume.
    saved.max_steps = max(saved.max_steps, cfg.max_steps) if cfg.max_steps != PretrainConfig().max_steps else saved.max_steps
    run_id = rec.id if rec else json.loads((path / "run.json").read_text())["id"]
    return saved, path, run_id


def _dataset(cfg: PretrainConfig, registry: Registry):
    if not cfg.data:
        raise UserError("train.data is not set: pass --data NAME (a dataset from 'llmkit data prepare --task lm')")
    rec = registry.get(cfg.data, "dataset")
    if rec.kind != "lm":
        raise UserError(f"dataset {rec.ref} is a '{rec.kind}' dataset; pretraining needs one prepared with --task lm")
    manifest = json.loads((Path(rec.path) / "manifest.json").read_text())
    return rec, Path(rec.path), manifest


def _pretrain(cfg, ws, registry, d, console, time_limit_s) -> Model:
    cfg, run_dir, run_id = _resolve_run(cfg, ws, registry)
    ds_rec, ds_path, manifest = _dataset(cfg, registry)
    vocab = manifest["tokenizer"]["vocab_size"]
    train_w = TokenWindows(ds_path / "shards" / "train.bin", vocab, cfg.context)
    val_w = TokenWindows(ds_path / "shards" / "val.bin", vocab, cfg.context)
    for split, w in (("train", train_w), ("val", val_w)):
        if w.length < cfg.context + 2:
            raise UserError(f"train.context = {cfg.context} is longer than the whole {split} split of {ds_rec.ref} "
                            f"({w.length} tokens); lower --context or prepare more data")
    tok_info = manifest["tokenizer"]  # special ids from the manifest: loading a tokenizer costs seconds
    name = cfg.name or f"{ds_rec.name}-{cfg.preset}"

    torch.manual_seed(cfg.seed)
    fields = model_fields(cfg.preset, vocab, cfg.context, bos_token_id=tok_info.get("bos_token_id", tok_info["eos_token_id"]),
                          eos_token_id=tok_info["eos_token_id"], pad_token_id=tok_info["pad_token_id"],
                          dropout=cfg.dropout, overrides=cfg.model)
    model = Llama(plain_config(fields)).to(d.device)
    n_params = count_parameters(model)
    device_type = "cuda" if d.device.startswith("cuda") else "cpu"
    precision = resolve_precision(cfg.precision, device_type)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device_type)
    sampler = torch.Generator().manual_seed(cfg.seed)
    step, best_val, evals_without_gain = 0, float("inf"), 0

    if run_dir is None:
        run_dir = ws.folder("runs", f"{name}-{uuid.uuid4().hex[:6]}")
        if d.is_main:
            run_dir.mkdir(parents=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": cfg.model_dump()}, sort_keys=False))
            rec = registry.add("run", name, kind="pretrain", path=run_dir, params=cfg.model_dump(),
                               parents=[(ds_rec.id, "trained_on")])
            run_id = rec.id
            (run_dir / "run.json").write_text(json.dumps({"id": run_id, "dataset": ds_rec.id}))
        # Every rank made its own random folder name; rank 0's is the one that exists.
        run_id, run_name = _broadcast_str(f"{run_id}/{run_dir.name}", d).split("/")
        run_dir = ws.folder("runs", run_name)
    if cfg.canaries:
        train_w = _canary_windows(cfg, run_dir, ds_path, vocab, tok_info["eos_token_id"], d, console)
    else:
        checkpoints = list_checkpoints(run_dir)
        if checkpoints:
            state = load_checkpoint(checkpoints[-1], model)
            optimizer.load_state_dict(state["optimizer"])
            sampler.set_state(state["sampler"])
            torch.set_rng_state(state["torch_rng"])
            if torch.cuda.is_available() and "cuda_rng" in state:
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            step, best_val, evals_without_gain = int(state["step"]), float(state["best_val"]), int(state["evals_without_gain"])

    log = console
    if d.is_main and log is not None:
        log.print(f"model [bold]{name}[/bold]: {cfg.preset} preset, {n_params / 1e6:.2f}M parameters, vocab {vocab}, "
                  f"context {cfg.context}; precision {precision}; device {d.device}" + (f" x{d.world}" if d.enabled else ""))
        log.print(f"run {run_id} at {run_dir}" + (f" (resuming at step {step})" if step else ""))
    metrics = MetricsLog(run_dir / "metrics.jsonl" if d.is_main else None, cfg.log)
    train_model = distributed.wrap(model, d, cfg.fsdp)
    if cfg.compile:
        train_model = torch.compile(train_model)
    amp = lambda: autocast(precision, device_type)  # noqa: E731
    tokens_per_step = cfg.batch_size * cfg.grad_accum * cfg.context * d.world

    def checkpoint_state() -> dict:
        state = {"step": step, "optimizer": optimizer.state_dict(), "sampler": sampler.get_state(),
                 "torch_rng": torch.get_rng_state(), "best_val": best_val, "evals_without_gain": evals_without_gain}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def run_eval() -> dict:
        return evaluate_lm(model, val_w.sequential_batches(cfg.batch_size * 4, cfg.eval_max_batches), d.device, amp)

    started = time.time()
    last_val = "-"
    best_result = None
    stopped_early = False
    train_model.train()
    with StopFlag() as stop, progress_bar(log if log is not None else _null_console()) as bar:
        task = bar.add_task("pretrain", total=cfg.max_steps, completed=step, loss=float("nan"), tok_s=0.0, val=last_val)
        t_last = time.time()
        while step < cfg.max_steps:
            lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                x, y = train_w.random_batch(cfg.batch_size, sampler, d.rank, d.world)
                x, y = x.to(d.device), y.to(d.device)
                sync = micro == cfg.grad_accum - 1
                ctx = train_model.no_sync() if (d.enabled and not sync and hasattr(train_model, "no_sync")) else _nullctx()
                with ctx, amp():
                    loss = lm_loss(train_model, x, y) / cfg.grad_accum
                loss.backward()
                loss_sum += float(loss.detach())
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)) if cfg.grad_clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = d.mean(loss_sum)
            now = time.time()
            tok_s = tokens_per_step / max(now - t_last, 1e-9)
            t_last = now
            metrics.write(step=step, loss=loss_value, lr=lr, grad_norm=grad_norm, tokens_per_s=round(tok_s, 1))
            bar.update(task, completed=step, loss=loss_value, tok_s=tok_s)

            out_of_time = time_limit_s is not None and now - started > time_limit_s
            if step % cfg.eval_every == 0 or step == cfg.max_steps or out_of_time:
                result = run_eval()
                metrics.write(step=step, **result)
                last_val = f"{result['val_loss']:.4f}"
                bar.update(task, val=last_val)
                if result["val_loss"] < best_val:
                    best_val, evals_without_gain, best_result = result["val_loss"], 0, result
                    if d.is_main:
                        save_weights(run_dir / "best", model)
                else:
                    evals_without_gain += 1
                if cfg.early_stopping and evals_without_gain >= cfg.early_stopping:
                    stopped_early = True
            if d.is_main and (step % cfg.checkpoint_every == 0 or stop.signal is not None):
                save_checkpoint(run_dir, step, model, checkpoint_state(), cfg.keep_checkpoints)
            d.barrier()
            if stop.signal is not None:
                raise TrainingInterrupted(step, run_id)
            if stopped_early or out_of_time:
                break

    metrics.close()
    seconds = time.time() - started
    if (run_dir / "best" / "model.safetensors").exists():
        load_weights(run_dir / "best", model)
    # The best evaluation of this process is the final one; after a resume, measure again.
    final = best_result if best_result is not None else run_eval()
    model_path = ws.folder("models", f"{name}-{run_id}")
    if d.is_main:
        history = read_metrics(run_dir / "metrics.jsonl")
        plot_losses(history, run_dir / "plots" / "loss.png")
        summary = {"steps": step, "val_loss": final["val_loss"], "val_ppl": final["val_ppl"], "parameters": n_params,
                   "seconds": round(seconds, 2), "tokens_seen": step * tokens_per_step, "precision": precision,
                   "stopped_early": stopped_early}
        lineage = {"format": "llmkit.model/1", "task": "causal-lm", "preset": cfg.preset, "parameters": n_params,
                   "dataset": {"id": ds_rec.id, "ref": ds_rec.ref}, "run": {"id": run_id, "path": str(run_dir)},
                   "parent_model": None, "metrics": summary, "config": cfg.model_dump()}
        if cfg.canaries:
            lineage["canaries"] = {"planted": cfg.canaries, "repeats": cfg.canary_repeats, "file": canaries.FILE}
        extra = (run_dir / canaries.FILE,) if cfg.canaries else ()
        save_llama_folder(model, fields, ds_path / "tokenizer", model_path, lineage, extra_files=extra)
        rec = registry.add("model", name, kind="causal-lm", path=model_path, params={"preset": cfg.preset, "parameters": n_params},
                           metrics=summary, parents=[(run_id, "produced_by"), (ds_rec.id, "trained_on")])
        registry.update_metrics(run_id, summary)
        if log is not None:
            log.print(f"val loss {final['val_loss']:.4f} (perplexity {final['val_ppl']:.2f}) after {step} steps in {seconds:.1f}s")
            log.print(f"model [bold]{rec.ref}[/bold] at {model_path}; loss curve {run_dir / 'plots' / 'loss.png'}")
        return Model(model_path, name, rec.id, rec.version, lineage)
    return Model(model_path, name)


def _canary_windows(cfg: PretrainConfig, run_dir: Path, ds_path: Path, vocab: int, sep_id: int, d, console) -> TokenWindows:
    """The train shard with canaries planted, written once per run (a resumed run reuses it)."""
    from transformers import AutoTokenizer

    shard = run_dir / "canaries" / "train.bin"
    if d.is_main and not shard.exists():
        tokenizer = AutoTokenizer.from_pretrained(str(ds_path / "tokenizer"))
        planted = canaries.make_canaries(tokenizer, cfg.canaries, cfg.canary_repeats, cfg.seed)
        longest = max(len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in planted) + 2
        if longest > cfg.context:
            raise UserError(f"train.context = {cfg.context} is shorter than a canary ({longest} tokens with separators); "
                            "raise --context or train without --canaries")
        with atomic_dir(shard.parent) as tmp:
            added = canaries.plant(ds_path / "shards" / "train.bin", tmp / "train.bin", planted, tokenizer, sep_id,
                                   shard_dtype(vocab), cfg.seed)
        canaries.save(planted, run_dir)
        if console is not None:
            console.print(f"planted {cfg.canaries} canaries ({added} tokens; repeats {cfg.canary_repeats}) and kept "
                          f"{cfg.canaries} unplanted references in {run_dir / canaries.FILE}")
    d.barrier()
    return TokenWindows(shard, vocab, cfg.context)


def _broadcast_str(value: str | None, d) -> str:
    if not d.enabled:
        return value  # type: ignore[return-value]
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _null_console():
    from rich.console import Console

    return Console(quiet=True)
