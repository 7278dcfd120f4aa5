"""`llmkit demo`: both halves of the product end to end, in two acts.

scratch: a small model trained from nothing on text every machine has (the standard library's source),
evaluated, compressed and exported. real: the built-in pretrained chat model tuned with LoRA on an
instruction set, compared with its base, exported to GGUF with its chat template. `demo.act` chooses.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.config import DemoConfig
from llmkit.demo.real import RealResult, find_chat_data, real_act
from llmkit.demo.scratch import ScratchResult, scratch_act
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace


@dataclass
class DemoResult:
    scratch: ScratchResult | None = None
    real: RealResult | None = None
    skipped: str | None = None   # why an asked-for act did not run

    @property
    def serve_models(self) -> list[str]:
        return [act.serve_model for act in (self.scratch, self.real) if act is not None and act.serve_model]


def demo(cfg: DemoConfig, ws: Workspace | None = None, registry: Registry | None = None, console=None,
         progress=None) -> DemoResult:
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    say = console.print if console is not None else (lambda *a, **k: None)
    chat_data = find_chat_data(cfg) if cfg.act in ("real", "both") else None
    if cfg.act == "real" and chat_data is None:
        raise UserError("demo --act real needs an instruction set: --chat-data PATH (a JSONL of conversations or "
                        "instructions, or a folder of them), or $LLMKIT_DEMO_CHAT_DATA")
    result = DemoResult()
    if cfg.act in ("scratch", "both"):
        if cfg.act == "both":
            say("[bold reverse] act 1: a model from scratch [/bold reverse]")
        result.scratch = scratch_act(cfg, ws, registry, console, progress)
    if cfg.act in ("real", "both"):
        if chat_data is None:
            result.skipped = ("real act skipped: no instruction set found (give --chat-data PATH or set "
                              "$LLMKIT_DEMO_CHAT_DATA; ../shared/data/instruct_small is used when it is there)")
            say(result.skipped)
        else:
            if cfg.act == "both":
                say("[bold reverse] act 2: a real pretrained chat model, tuned and shipped [/bold reverse]")
            result.real = real_act(cfg, chat_data, ws, registry, console, progress)
    return result
