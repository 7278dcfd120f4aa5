"""Training throughput of the micro preset (context 256, batch 8): llmkit's loop with its best settings
against a minimal plain-PyTorch fp32 loop training the same model (transformers' LlamaForCausalLM,
same initial weights, same batches, same schedule), in the same run.

Prints tokens/s of both and their ratio (goal >= 2.0), the loss of both after the same steps (must
agree within 2 %), and model FLOPs utilisation against fp32 and bf16 matmul peaks measured here.

    .venv/bin/python bench/train_throughput.py [--steps 20] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CONTEXT, BATCH, WARMUP = 256, 8, 3


def matmul_peak(dtype: torch.dtype, n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def flops_per_token(cfg, params: int) -> float:
    # 6N for the weights' forward+backward, plus attention scores and values (PaLM appendix B).
    return 6 * params + 12 * cfg.num_hidden_layers * cfg.hidden_size * CONTEXT


def reference_loop(cfg, init_state, shard, vocab, steps, lr, seed) -> tuple[list[float], list[float]]:
    """What a user writes by hand: HF model, AdamW, fp32, the same warm-up+cosine schedule."""
    from transformers import LlamaForCausalLM

    from llmkit.train.batches import TokenWindows
    from llmkit.train.optim import lr_at

    model = LlamaForCausalLM(cfg)
    model.load_state_dict(init_state, strict=False)
    model.tie_weights()
    model.train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.99))
    windows = TokenWindows(shard, vocab, CONTEXT)
    gen = torch.Generator().manual_seed(seed)
    losses, times = [], []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, lr, lr / 10, 5, steps)
        t = time.perf_counter()
        x, y = windows.random_batch(BATCH, gen)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        losses.append(float(loss))
    return losses, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)  # best settings: compiled
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()

    from llmkit.config import DataConfig, PretrainConfig
    from llmkit.data.pipeline import prepare
    from llmkit.models.llama import Llama
    from llmkit.models.presets import count_parameters, llama_config
    from llmkit.registry import Registry
    from llmkit.train.optim import cpu_has_fast_bf16
    from llmkit.train.pretrain import pretrain
    from llmkit.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp))
        reg = Registry.for_workspace(ws.root)
        ds = prepare(DataConfig(inputs=[str(TEXT)], name="shakespeare", task="lm", tokenizer="bpe:4096", pii="keep",
                                dedupe="none"), ws, reg)
        vocab = ds.manifest["tokenizer"]["vocab_size"]
        cfg = llama_config("micro", vocab, CONTEXT, bos_token_id=0, eos_token_id=0, pad_token_id=1)
        seed = 1337
        torch.manual_seed(seed)
        init = Llama(cfg)
        params = count_parameters(init)
        init_state = init.hf_state_dict()

        ref_losses, ref_times = reference_loop(cfg, init_state, ds.path / "shards" / "train.bin", vocab, args.steps, args.lr, seed)
        train_cfg = PretrainConfig(data="shakespeare", preset="micro", context=CONTEXT, batch_size=BATCH,
                                   max_steps=args.steps, lr=args.lr, min_lr=args.lr / 10, warmup_steps=5,
                                   eval_every=10**6, checkpoint_every=10**6, eval_max_batches=1, seed=seed,
                                   compile=args.compile, name="throughput")
        model = pretrain(train_cfg, ws, reg)
        rows = [json.loads(line) for line in (Path(model.lineage["run"]["path"]) / "metrics.jsonl").read_text().splitlines()]
        ours = [r for r in rows if "loss" in r]
        precision = model.lineage["metrics"]["precision"]

    tokens = BATCH * CONTEXT
    ref_tok_s = tokens / statistics.median(ref_times[WARMUP:])
    our_tok_s = statistics.median([r["tokens_per_s"] for r in ours[WARMUP:]])
    ref_loss, our_loss = ref_losses[-1], ours[-1]["loss"]
    fpt = flops_per_token(cfg, params)
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    figures = {
        "params": params, "steps": args.steps, "tokens_per_step": tokens, "precision": precision, "compile": args.compile,
        "bf16_fast_cpu": cpu_has_fast_bf16(),
        "reference_tok_s": round(ref_tok_s, 1), "llmkit_tok_s": round(our_tok_s, 1), "ratio": round(our_tok_s / ref_tok_s, 3),
        "reference_loss": round(ref_loss, 4), "llmkit_loss": round(our_loss, 4),
        "loss_rel_diff": round(abs(our_loss - ref_loss) / ref_loss, 5),
        "matmul_peak_fp32_gflops": round(peak32 / 1e9, 1), "matmul_peak_bf16_gflops": round(peak16 / 1e9, 1),
        "llmkit_mfu_fp32": round(our_tok_s * fpt / peak32, 4), "llmkit_mfu_bf16": round(our_tok_s * fpt / peak16, 4),
        "reference_mfu_fp32": round(ref_tok_s * fpt / peak32, 4),
    }
    print(f"micro preset ({params / 1e6:.1f}M), context {CONTEXT}, batch {BATCH}, {args.steps} steps")
    print(f"{'':12s}{'tok/s':>10s}{'loss':>10s}")
    print(f"{'reference':12s}{ref_tok_s:10.0f}{ref_loss:10.4f}")
    print(f"{'llmkit':12s}{our_tok_s:10.0f}{our_loss:10.4f}   ({precision}{', compiled' if args.compile else ''})")
    print(f"ratio {figures['ratio']:.2f} (goal >= 2.0); loss difference {100 * figures['loss_rel_diff']:.2f}% (must be < 2%)")
    print(f"matmul peak fp32 {figures['matmul_peak_fp32_gflops']} GFLOP/s, bf16 {figures['matmul_peak_bf16_gflops']} GFLOP/s; "
          f"llmkit MFU {100 * figures['llmkit_mfu_fp32']:.1f}% of fp32 peak, {100 * figures['llmkit_mfu_bf16']:.1f}% of bf16 peak")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
