"""`llmkit train pretrain`: a Llama-architecture model trained from scratch on token shards.

Our own loop on plain PyTorch: AdamW, warm-up + cosine, gradient accumulation and clipping,
autocast, optional torch.compile, DDP/FSDP under torchrun; evaluation on the whole val split,
best weights kept, resumable checkpoints, and a registered Hugging Face model folder at the end.
"""

from __future__ import annotations

from pathlib import Path

import torch

import llmkit.train.distributed as distributed
from llmkit.config import PretrainConfig
from llmkit.data import canaries
from llmkit.data.dataset import DatasetVersion, open_dataset
from llmkit.data.shards import shard_dtype
from llmkit.errors import UserError
from llmkit.models.io import Model, save_llama_folder
from llmkit.models.llama import Llama
from llmkit.models.naming import output_name
from llmkit.models.presets import count_parameters, model_fields, plain_config
from llmkit.registry import Registry
from llmkit.train.batches import TokenWindows
from llmkit.train.checkpoint import (
    latest_step,
    model_made_at,
    resume_run,
    run_model_folder,
    start_run,
    tracks_runs,
)
from llmkit.train.lm_loss import evaluate_lm, lm_loss
from llmkit.train.loop import Job, fit
from llmkit.train.metrics import MetricsLog, plot_losses, read_metrics
from llmkit.train.optim import adamw, autocast, resolve_precision
from llmkit.workspace import Workspace, atomic_dir


@tracks_runs
def pretrain(cfg: PretrainConfig, ws: Workspace | None = None, registry: Registry | None = None,
             console=None, time_limit_s: float | None = None) -> Model:
    cfg = PretrainConfig.given(cfg, "llmkit.train.pretrain")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    d = distributed.setup()
    try:
        return _pretrain(cfg, ws, registry, d, console, time_limit_s)
    finally:
        distributed.teardown(d)


def _resolve_run(cfg: PretrainConfig, registry: Registry) -> tuple[PretrainConfig, Path | None, str | None]:
    saved, path, run_id = resume_run(cfg, "pretrain", registry)
    if path is not None:
        # The saved config is the run; only the step budget may grow on resume.
        saved.max_steps = max(saved.max_steps, cfg.max_steps) if cfg.max_steps != PretrainConfig().max_steps else saved.max_steps
    return saved, path, run_id


def _dataset(cfg: PretrainConfig, registry: Registry):
    if not cfg.data:
        raise UserError("pretrain.data is not set: pass --data NAME (a dataset from 'llmkit data prepare --task lm')")
    ds = open_dataset(registry, cfg.data)
    if ds.kind != "lm":
        raise UserError(f"dataset {ds.ref} is a '{ds.kind}' dataset; pretraining needs one prepared with --task lm")
    return ds


def _windows(cfg: PretrainConfig, ds: DatasetVersion) -> tuple[TokenWindows, TokenWindows]:
    train_w = TokenWindows(ds.shard_file("train"), ds.vocab_size, cfg.context)
    val_w = TokenWindows(ds.shard_file("val"), ds.vocab_size, cfg.context)
    for split, w in (("train", train_w), ("val", val_w)):
        if w.length < cfg.context + 2:
            # an empty val split is no matter of context: it wants more records held out (or more of them)
            more = ("give val a larger share (llmkit data prepare ... --splits-val 0.1) or more data" if split == "val"
                    else "prepare more data")
            raise UserError(f"pretrain.context = {cfg.context} is longer than the whole {split} split of {ds.ref} "
                            f"({w.length} tokens); " + (f"{more}, or lower --context" if w.length > 2 else more))
    return train_w, val_w


def _pretrain(cfg, ws, registry, d, console, time_limit_s) -> Model:
    cfg, run_dir, run_id = _resolve_run(cfg, registry)
    ds_rec = _dataset(cfg, registry)
    vocab = ds_rec.vocab_size
    train_w, val_w = _windows(cfg, ds_rec)
    tok_info = ds_rec.manifest["tokenizer"]  # special ids from the manifest: loading a tokenizer costs seconds
    name = output_name("pretrain", cfg.name, f"{ds_rec.name}-{cfg.preset}")

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
    if run_dir is None:
        run_dir, run_id = start_run(ws, registry, name, "pretrain", cfg, [(ds_rec.id, "trained_on")],
                                    info={"dataset": ds_rec.id}, create=d.is_main)
        # Every rank made its own random folder name; rank 0's is the one that exists.
        run_id, run_name = _broadcast_str(f"{run_id}/{run_dir.name}", d).split("/")
        run_dir = ws.folder("runs", run_name)
    if cfg.canaries:
        train_w = _canary_windows(cfg, run_dir, ds_rec, vocab, tok_info["eos_token_id"], d, console)
    resume_at = latest_step(run_dir)

    log = console
    if d.is_main and log is not None:
        log.print(f"model [bold]{name}[/bold]: {cfg.preset} preset, {n_params / 1e6:.2f}M parameters, vocab {vocab}, "
                  f"context {cfg.context}; precision {precision}; device {d.device}" + (f" x{d.world}" if d.enabled else ""))
        log.print(f"run {run_id} at {run_dir}" + (f" (resuming at step {resume_at})" if resume_at else ""))
    metrics = MetricsLog(run_dir / "metrics.jsonl" if d.is_main else None, cfg.log)

    def wrap(m: torch.nn.Module) -> torch.nn.Module:
        m = distributed.wrap(m, d, cfg.fsdp)
        return torch.compile(m) if cfg.compile else m
    amp = lambda: autocast(precision, device_type)  # noqa: E731

    def batch(_index: int):
        # The sampler, not the index, picks the windows: it is restored on resume, so the batches are the same.
        x, y = train_w.random_batch(cfg.batch_size, sampler, d.rank, d.world)
        return x.to(d.device), y.to(d.device)

    def run_eval(m) -> dict:
        return evaluate_lm(m, val_w.sequential_batches(cfg.batch_size * 4, cfg.eval_max_batches), d.device, amp)

    job = Job(stage="pretrain", model=model, optimizer=optimizer, batch=batch,
              loss=lambda fwd, xy: (lm_loss(fwd, *xy), xy[0].numel()), evaluate=run_eval, score="val_loss",
              total_steps=cfg.max_steps, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
              grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip, eval_every=cfg.eval_every,
              checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
              early_stopping=cfg.early_stopping, precision=precision, device=device_type, trainable_only=False,
              wrap=wrap, state=lambda: {"sampler": sampler.get_state()},
              load_state=lambda state: sampler.set_state(state["sampler"]), dist=d,
              tokens_per_step=cfg.batch_size * cfg.grad_accum * cfg.context * d.world,
              made_model_at=lambda at: model_made_at(registry, run_id, at))
    result = fit(job, run_dir, run_id, metrics, log if d.is_main else None, time_limit_s=time_limit_s)
    # The best evaluation's figures; a best kept by an older llmkit has none beside it: measure again.
    final = result.best if result.best is not None else run_eval(model)
    return _save(cfg, ws, registry, model, fields, name, ds_rec, run_dir, run_id, result, final, n_params, precision,
                 job.tokens_per_step, d, log)


def _save(cfg, ws, registry, model, fields, name, ds_rec, run_dir, run_id, result, final, n_params, precision,
          tokens_per_step, d, log) -> Model:
    """The trained model's folder, plots and registry records (on the main rank)."""
    step, seconds, stopped_early = result.step, result.seconds, result.stopped_early
    model_path = run_model_folder(ws, name, run_id, step)
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
        save_llama_folder(model, fields, ds_rec.tokenizer_dir, model_path, lineage, extra_files=extra)
        rec = registry.add("model", name, kind="causal-lm", path=model_path, params={"preset": cfg.preset, "parameters": n_params},
                           metrics=summary, parents=[(run_id, "produced_by"), (ds_rec.id, "trained_on")])
        registry.update_metrics(run_id, summary)
        if log is not None:
            log.print(f"val loss {final['val_loss']:.4f} (perplexity {final['val_ppl']:.2f}) after {step} steps in {seconds:.1f}s")
            log.print(f"model [bold]{rec.ref}[/bold] at {model_path}; loss curve {run_dir / 'plots' / 'loss.png'}")
        return Model(model_path, name, rec.id, rec.version, lineage)
    return Model(model_path, name)


def _canary_windows(cfg: PretrainConfig, run_dir: Path, ds: DatasetVersion, vocab: int, sep_id: int, d, console) -> TokenWindows:
    """The train shard with canaries planted, written once per run (a resumed run reuses it)."""
    from transformers import AutoTokenizer

    shard = run_dir / "canaries" / "train.bin"
    if d.is_main and not shard.exists():
        tokenizer = AutoTokenizer.from_pretrained(str(ds.tokenizer_dir))
        planted = canaries.make_canaries(tokenizer, cfg.canaries, cfg.canary_repeats, cfg.seed)
        longest = max(len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in planted) + 2
        if longest > cfg.context:
            raise UserError(f"pretrain.context = {cfg.context} is shorter than a canary ({longest} tokens with separators); "
                            "raise --context or train without --canaries")
        with atomic_dir(shard.parent) as tmp:
            added = canaries.plant(ds.shard_file("train"), tmp / "train.bin", planted, tokenizer, sep_id,
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
