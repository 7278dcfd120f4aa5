"""A real uvicorn server on 127.0.0.1 for the serving tests, shared by the session.

It serves `tiny-lm` (a tiny char-level causal LM with a 1024-token context, trained for a few
seconds; served under that name with NAME=MODEL) and `sms-clf` (the root conftest's classifier).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmkit.config import ServeConfig
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.conftest import tiny_config
from tests.shared_build import made_once


@dataclass
class Served:
    base_url: str
    registry: Registry
    workspace: Path
    running: object
    api_key: str | None = None


@pytest.fixture(scope="session")
def serve_lm(lm_workspace: Path, shared_dir: Path | None) -> str:
    """A tiny LM with room for chat prompts and long generations (context 1024), registered as 'serve-lm'."""
    from llmkit.train import pretrain

    def build() -> None:
        ws = Workspace.open(lm_workspace)
        pretrain(tiny_config(name="serve-lm", context=1024, max_steps=150, eval_every=150, checkpoint_every=150), ws,
                 Registry.for_workspace(ws.root))

    made_once(shared_dir, lm_workspace, "serve-lm", build, lambda: None)
    return "serve-lm"


@pytest.fixture(scope="session")
def smol_q8(lm_workspace: Path, smollm2, shared_dir: Path | None) -> str:
    """smollm2-135m exported once to a q8_0 GGUF for the tests that serve it on llama.cpp, registered as 'smol-q8'."""
    from llmkit.config import ExportConfig
    from llmkit.optimize.export import export

    def build() -> None:
        ws = Workspace.open(lm_workspace)
        export("smollm2-135m", ExportConfig(quant="q8_0", table=False, name="smol-q8"), ws, Registry.for_workspace(ws.root))

    made_once(shared_dir, lm_workspace, "smol-q8", build, lambda: None)
    return "smol-q8"


@contextmanager
def smol_on_both_backends(workspace: Path, gguf: str, **options):
    """A server with smollm2-135m as 'smol' (torch) and its GGUF `gguf` as 'smol-gguf' (llama.cpp): its URL."""
    running, _ = start_server(workspace, ["smol=smollm2-135m", f"smol-gguf={gguf}"], **options)
    try:
        yield running.url
    finally:
        running.stop()


def openai_client(url: str):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def start_server(workspace: Path, models: list[str], **options):
    from llmkit.serve import start

    ws = Workspace.open(workspace)
    registry = Registry.for_workspace(ws.root)
    cfg = ServeConfig(models=models, port=0, **options)
    return start(cfg, ws, registry), registry


@pytest.fixture(scope="session")
def server(lm_workspace: Path, serve_lm: str, sms_classifier) -> Served:
    running, registry = start_server(lm_workspace, [f"tiny-lm={serve_lm}", "sms-clf", "minilm-l6"], max_batch=8,
                                     max_queue=64)
    yield Served(running.url, registry, lm_workspace, running)
    running.stop()
