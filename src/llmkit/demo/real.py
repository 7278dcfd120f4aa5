"""`llmkit demo`'s second act: a real pretrained chat model adapted, checked and shipped.

The built-in SmolLM2-135M-Instruct is tuned with LoRA on a small instruction set for a time budget
(steps sized from a two-step probe), merged, compared with its base by the promotion gate (held-out
replies and the general-ability check), exported to GGUF q8_0 with its own chat template, and asked
a question through that GGUF alone: what a user would then serve or hand to Ollama.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.config import CompareConfig, DataConfig, DemoConfig, ExportConfig, SftConfig
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace

BASE = "smollm2-135m"
QUESTION = "What is the capital of France? Answer in one sentence."
# Where the instruction set is looked for when demo.chat_data is empty: the data folder beside a source
# checkout (../shared/data, as in this repository's CI) or the current directory's.
CHAT_DATA_ENV = "LLMKIT_DEMO_CHAT_DATA"
CHAT_DATA_PLACES = [Path("../shared/data/instruct_small"), Path("shared/data/instruct_small")]


@dataclass
class RealResult:
    base: str
    dataset: str
    adapter: str
    model: str           # the merged, standalone tuned model
    steps: int
    seconds_per_step: float
    gate: dict = field(default_factory=dict)   # verdict, reasons, task and general figures, flipped counts
    gguf: str | None = None
    serve_model: str | None = None
    answer: str = ""     # the GGUF's reply to QUESTION (llama.cpp, the model's own chat template)


def find_chat_data(cfg: DemoConfig) -> Path | None:
    """The instruction set to tune on: demo.chat_data, $LLMKIT_DEMO_CHAT_DATA, or a known place; None if none."""
    if cfg.chat_data:
        path = Path(cfg.chat_data).expanduser()
        if not path.exists():
            raise UserError(f"demo.chat_data = '{cfg.chat_data}': no such file or folder")
        return path
    if os.environ.get(CHAT_DATA_ENV):
        return Path(os.environ[CHAT_DATA_ENV]).expanduser()
    here = Path(__file__).resolve()  # src/llmkit/demo/real.py in a source checkout: shared/ is beside the repository
    repo_side = [here.parents[3].parent / "shared" / "data" / "instruct_small"] if here.parents[2].name == "src" else []
    return next((p for p in [*CHAT_DATA_PLACES, *repo_side] if p.is_dir()), None)  # an installed copy has no repo_side


def real_act(cfg: DemoConfig, chat_data: Path, ws: Workspace, registry: Registry, console=None, progress=None) -> RealResult:
    from llmkit.data.pipeline import prepare
    from llmkit.eval.gate import gate
    from llmkit.models.io import resolve_model
    from llmkit.optimize.export import export
    from llmkit.train.estimate import estimate_sft
    from llmkit.train.lora import merge
    from llmkit.train.supervised import sft

    say = console.print if console is not None else (lambda *a, **k: None)
    say(f"[bold]1/5 base[/bold]: {BASE} (SmolLM2-135M-Instruct; made from its package on first use, then cached)")
    base = resolve_model(BASE, registry)

    say(f"[bold]2/5 data[/bold]: preparing {chat_data}")
    ds = prepare(DataConfig(inputs=[str(chat_data)], name="demo-chat", task="chat", tokenizer="char", skip_bad=True,
                            splits={"val": 0.1, "test": 0.1}), ws, registry, progress=progress)

    tune = SftConfig(base=BASE, data=ds.ref, method="lora", name="demo-smollm2-lora", batch_size=4, max_length=256,
                     lr=5e-4, eval_max_examples=16, checkpoint_every=10_000, max_steps=1)
    probe = estimate_sft(tune, ws, registry)
    budget = cfg.real_minutes * 60
    steps = max(3, int(budget / max(probe["seconds_per_step"], 1e-3) * 0.8))
    say(f"[bold]3/5 tune[/bold]: LoRA on the {probe['path']} path, about {cfg.real_minutes:g} minute{'' if cfg.real_minutes == 1 else 's'} ({steps} steps of "
        f"{probe['seconds_per_step']:.2f} s; {probe['trainable_parameters']:,} of {probe['parameters']:,} parameters train)")
    adapter = sft(tune.model_copy(update={"max_steps": steps}), ws, registry, console=console)
    tuned = merge(adapter.ref, ws, registry, name="demo-smollm2-chat", console=console)

    say("[bold]4/5 compare[/bold]: the tuned model against its base (held-out replies, general-ability check)")
    verdict = gate(base.ref, tuned.ref, CompareConfig(data=ds.ref, max_items=16, max_new_tokens=48), ws, registry, progress)
    task, general = verdict["task"], verdict["general"] or {}
    say(f"  {verdict['verdict'].upper()}: {task['metric']} {task['base']:.3f} → {task['tuned']:.3f}; "
        f"{verdict['flipped']['improved']} items better, {verdict['flipped']['regressed']} worse"
        + "".join(f"; {reason}" for reason in verdict["reasons"]))
    if general:
        say(f"  general check: {_general_line(general)}")

    import importlib.util

    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    say("[bold]5/5 ship[/bold]: GGUF q8_0 with the model's own chat template (llama.cpp / Ollama)")
    gguf_model, _rows = export(tuned.ref, ExportConfig(quant="q8_0", table=False), ws, registry, console, progress)
    gguf_file = gguf_model.path / "model-q8_0.gguf"
    answer = _ask(gguf_file, QUESTION) if has_llama_cpp else ""
    if answer:
        say(f"  the GGUF alone, asked {QUESTION!r}: {answer}")
    return RealResult(base=base.ref, dataset=ds.ref, adapter=adapter.ref, model=tuned.ref, steps=steps,
                      seconds_per_step=probe["seconds_per_step"],
                      gate={k: verdict[k] for k in ("verdict", "reasons", "task", "items", "id")}
                      | {"general": {k: general[k] for k in ("base", "tuned", "perplexity_increase", "answer_drop")} if general else None}
                      | {"improved": verdict["flipped"]["improved"], "regressed": verdict["flipped"]["regressed"]},
                      gguf=str(gguf_file), serve_model=f"{gguf_model.name}:v{gguf_model.version}" if has_llama_cpp else tuned.ref,
                      answer=answer)


def _general_line(general: dict) -> str:
    base, tuned = general["base"], general["tuned"]
    return (f"English perplexity {base['perplexity']:.2f} → {tuned['perplexity']:.2f}, instructions answered "
            f"{base['answered']:.0%} → {tuned['answered']:.0%}")


def _ask(gguf_file: Path, question: str) -> str:
    """One greedy chat turn on the GGUF through llama.cpp, as Ollama or a llama.cpp server would run it."""
    from llmkit.runtime.llama_cpp import open_llama

    llm = open_llama(gguf_file, n_ctx=512)
    out = llm.create_chat_completion(messages=[{"role": "user", "content": question}], max_tokens=40, temperature=0.0)
    return out["choices"][0]["message"]["content"].strip()
