"""`llmkit demo`'s first act: a model from scratch, end to end, on a corpus every machine has offline.

With no data it trains on the Python standard library's own source (found at run time through
sysconfig), so a fresh machine needs nothing but llmkit: prepare the data, pretrain a small model
for a few minutes, report val perplexity, sample completions, and say where everything is.
"""

from __future__ import annotations

import json
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmkit.config import DataConfig, DemoConfig, PretrainConfig
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace, atomic_write_bytes

CORPUS_CHARS = 4_000_000  # enough for a model to learn Python's shape in minutes, quick to prepare
PROMPTS = ["def ", "import os\n", "class "]
# For Chinese or Japanese text: the openings of poem lines, the same in simplified and traditional script.
CJK_PROMPTS = ["明月", "白日依山", "青山"]
CJK_SAMPLE_RECORDS = 300  # records of --data read to decide whether it is mostly CJK text
DEMO_MODEL = dict(preset="nano", context=128, batch_size=16, lr=2e-3, min_lr=2e-4, weight_decay=0.1)
# Verse is local (a line is 6-16 characters, a quatrain under 64): half the context buys twice the steps in
# the same minutes.
CJK_MODEL = {**DEMO_MODEL, "context": 64}
PROBE_STEPS = 10  # timed to size the run; the median of the last 8
# Evaluations in the run; the model kept is the best of them. A small corpus is learnt by heart within the
# budget (the poems' val loss is lowest about 40 % in, then rises): with three evaluations the best fell far from it.
EVALUATIONS = 10
# Passes over the train split at most. The poems (245k characters) reach their lowest val loss at 8-10 passes with
# the nano model, and a run planned for 16 passes (3 minutes) ends worse: its cosine schedule anneals too late.
MAX_EPOCHS = 10


@dataclass
class ScratchResult:
    dataset: str
    model: str
    model_path: str
    run_path: str
    val_loss: float
    val_ppl: float
    steps: int
    samples: list[dict] = field(default_factory=list)
    report: str | None = None            # the evaluation report (HTML) of the demo model
    evaluation: dict = field(default_factory=dict)
    compressed: list = field(default_factory=list)  # before/after rows of the int8 and GGUF q8_0 versions
    gguf: str | None = None
    serve_model: str | None = None  # what `llmkit serve` should serve: the GGUF export when llama.cpp is here
    explanation: dict = field(default_factory=dict)  # which tokens one next-token prediction depends on


def stdlib_corpus(target: Path, max_chars: int = CORPUS_CHARS) -> Path:
    """A JSONL of the standard library's top-level .py files, one document per file."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rows, total = [], 0
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        rows.append(json.dumps({"text": text, "path": path.name}))
        total += len(text)
        if total >= max_chars:
            break
    if not rows:
        raise UserError(f"no Python sources found in {stdlib}; pass --data PATH with your own text")
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, ("\n".join(rows) + "\n").encode())
    return target


def data_config(source: Path, given: str) -> tuple[DataConfig, list[str]]:
    """How the demo prepares --data, and the prompts it samples from."""
    if not source.exists():
        raise UserError(f"demo.data = '{given}': no such file or folder")
    cjk = is_mostly_cjk(source)
    # Characters as tokens for Chinese: a 2k byte-level BPE would cut most of the ~5,000 characters of a
    # poetry corpus into bytes (samples with broken characters), and one token per character keeps every
    # sample valid text whatever the model draws. English and code keep the BPE.
    data_cfg = DataConfig(inputs=[str(source)], name="demo-" + source.stem.replace(".", "-"), task="lm",
                          tokenizer="char" if cjk else "bpe:2048", doc_split="file")
    return data_cfg, CJK_PROMPTS if cjk else PROMPTS


def is_mostly_cjk(source: Path) -> bool:
    """Whether the first records of `source` are mostly Chinese or Japanese text (as the BPE trainer decides)."""
    from itertools import islice

    from llmkit.data.ingest import iter_records
    from llmkit.data.tokenizer import CJK_SHARE, cjk_share

    records = islice(iter_records([str(source)], task="lm", skip_bad=True), CJK_SAMPLE_RECORDS)
    return cjk_share([r["text"] for r in records]) >= CJK_SHARE


def _seconds_per_step(cfg: PretrainConfig, vocab: int) -> float:
    """Time a few real training steps of the demo model, to fit max_steps into the time budget. The step is
    the one `pretrain` runs: its device, its precision (bf16 autocast where the CPU has it) and its fused AdamW;
    an fp32 probe timed 2-3x slower steps than training then ran, and the demo used a third of its minutes."""
    from llmkit.models.llama import Llama
    from llmkit.models.presets import model_fields, plain_config
    from llmkit.train.lm_loss import lm_loss
    from llmkit.train.optim import adamw, autocast, resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"  # as train.distributed.setup picks for one process
    precision = resolve_precision(cfg.precision, device)
    model = Llama(plain_config(model_fields(cfg.preset, vocab, cfg.context, overrides=cfg.model))).to(device)
    opt = adamw(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device)
    x = torch.randint(0, vocab, (cfg.batch_size, cfg.context), device=device)
    times = []
    for _ in range(PROBE_STEPS):
        t = time.perf_counter()
        with autocast(precision, device):
            loss = lm_loss(model, x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    warm = sorted(times[2:])
    return warm[len(warm) // 2]  # the median warm step: the first steps allocate, and one outlier does not decide


def planned_steps(budget_s: float, step_s: float, train_tokens: int, tokens_per_step: int) -> tuple[int, str]:
    """The run's steps and how they were chosen: what fits the budget (with room for evaluations and saving),
    but at most MAX_EPOCHS passes over the train split (a small corpus would be learnt by heart), and 20 at least."""
    fits = max(20, int(budget_s / step_s * 0.85))
    passes = max(20, train_tokens * MAX_EPOCHS // tokens_per_step)
    if passes < fits:  # the schedule then anneals when the val loss is lowest, not long after
        return passes, f"{passes} steps, {MAX_EPOCHS} passes over the train split: more would learn it by heart"
    return fits, f"{fits} steps"


def scratch_act(cfg: DemoConfig, ws: Workspace, registry: Registry, console=None, progress=None) -> ScratchResult:
    from llmkit.data.pipeline import prepare
    from llmkit.generate import generate
    from llmkit.models.io import load_causal_lm
    from llmkit.train.pretraining import pretrain

    say = console.print if console is not None else (lambda *a, **k: None)

    if cfg.data:
        data_cfg, prompts = data_config(Path(cfg.data).expanduser(), cfg.data)
    else:
        corpus = stdlib_corpus(ws.root / "demo" / "stdlib.jsonl")
        data_cfg = DataConfig(inputs=[str(corpus)], name="demo-stdlib", task="lm", tokenizer="bpe:2048", text_field="text")
        prompts = PROMPTS
    say(f"[bold]1/5 data[/bold]: preparing {data_cfg.inputs[0]}")
    ds = prepare(data_cfg, ws, registry, progress=progress)
    split = ds.manifest["splits"]
    say(f"  dataset {ds.ref}: {split['train']['tokens']:,} train / {split['val']['tokens']:,} val tokens, "
        f"{ds.manifest['counts']['duplicates_exact'] + ds.manifest['counts']['duplicates_near']} duplicates removed, "
        f"PII redacted: {sum(ds.manifest['pii'].values())}")

    budget = cfg.minutes * 60
    settings = CJK_MODEL if prompts is CJK_PROMPTS else DEMO_MODEL
    probe = PretrainConfig(data=ds.ref, **settings)
    steps, plan = planned_steps(budget, _seconds_per_step(probe, ds.manifest["tokenizer"]["vocab_size"]),
                                split["train"]["tokens"], probe.batch_size * probe.context)
    train_cfg = PretrainConfig(data=ds.ref, name=f"{ds.name}-model", max_steps=steps, warmup_steps=max(1, steps // 20),
                               eval_every=max(1, steps // EVALUATIONS), checkpoint_every=max(1, steps // 2),
                               eval_max_batches=8, **settings)
    say(f"[bold]2/5 train[/bold]: at most about {cfg.minutes:g} minute{'' if cfg.minutes == 1 else 's'} ({plan})")
    model = pretrain(train_cfg, ws, registry, console=console, time_limit_s=budget * 1.25)
    metrics = model.lineage["metrics"]

    say("[bold]3/5 samples[/bold]")
    lm, tok = load_causal_lm(model)
    samples = []
    for i, prompt in enumerate(prompts):
        out = generate(lm, tok, prompt, max_new_tokens=80, temperature=0.7, top_k=50, seed=i)
        samples.append({"prompt": prompt, "completion": out.text})
        if console is not None:
            console.rule(f"prompt {prompt!r}")
            console.print(prompt + out.text, markup=False, highlight=False)

    explanation = _explain_one(lm, tok, prompts[1] + samples[1]["completion"][:60], model.ref, console)

    from llmkit.config import BenchModelConfig, EvalConfig
    from llmkit.eval import bench_model, evaluate

    eval_split = "test" if split["test"]["records"] else "val"  # a small --data may leave the test split empty
    say(f"[bold]4/5 evaluate[/bold]: {eval_split}-split perplexity and speed")
    quality = evaluate(model.id, EvalConfig(data=ds.id, split=eval_split), ws, registry, progress)
    speed = bench_model(model.id, BenchModelConfig(prompt_tokens=min(64, settings["context"] - 32), new_tokens=32, runs=3), ws, registry, progress)
    figures = {k: quality.metrics[k] for k in ("perplexity", "bits_per_byte", "tokens")}
    figures.update({k: speed.metrics[k] for k in ("decode_tokens_per_s", "ttft_ms_p50", "size_mb")})
    say(f"  {eval_split} perplexity {figures['perplexity']:.2f}, {figures['bits_per_byte']:.3f} bits per byte; "
        f"decode {figures['decode_tokens_per_s']:.0f} tokens/s; report {quality.path}/report.html")

    import importlib.util

    from llmkit.config import ExportConfig, QuantizeConfig
    from llmkit.optimize.export import export
    from llmkit.optimize.quantize import quantize

    say("[bold]5/5 compress[/bold]: int8 quantization and a GGUF q8_0 export for llama.cpp / Ollama")
    _, int8_rows = quantize(model.id, QuantizeConfig(method="int8-weight", eval_max_examples=100), ws, registry, console, progress)
    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None  # the table runs the GGUF on llama.cpp
    gguf_model, gguf_rows = export(model.id, ExportConfig(quant="q8_0", eval_max_examples=100, table=has_llama_cpp), ws,
                                   registry, console, progress)
    gguf_file = str(gguf_model.path / "model-q8_0.gguf")
    return ScratchResult(dataset=ds.ref, model=model.ref, model_path=str(model.path),
                      run_path=model.lineage["run"]["path"], val_loss=metrics["val_loss"], val_ppl=metrics["val_ppl"],
                      steps=metrics["steps"], samples=samples, report=f"{quality.path}/report.html", evaluation=figures,
                      compressed=(int8_rows or []) + (gguf_rows or [])[1:], gguf=gguf_file,
                      serve_model=f"{gguf_model.name}:v{gguf_model.version}" if has_llama_cpp else model.ref,
                      explanation=explanation)


def _explain_one(lm, tok, text: str, name: str, console) -> dict:
    """Integrated Gradients for the model's next token after `text`, shown as coloured tokens."""
    from llmkit.config import ExplainConfig
    from llmkit.explain import explain_loaded
    from llmkit.explain.report import summary_lines, terminal_text

    exp = explain_loaded(lm, tok, "causal", text, ExplainConfig(method="ig", steps=20), name=name)
    if console is not None:
        console.rule("explain: which tokens the next one depends on")
        console.print(terminal_text(exp))
        for line in summary_lines(exp):
            console.print(line, markup=False, highlight=False)
    keys = ("text", "target", "probability", "tokens", "scores", "aopc", "aopc_random", "convergence_delta")
    return {k: v for k, v in exp.to_dict().items() if k in keys}
