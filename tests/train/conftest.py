"""A tiny lm dataset (char-level tiny shakespeare excerpt) and tiny-model overrides for training tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.config import DataConfig, PretrainConfig
from llmkit.data import prepare
from llmkit.registry import Registry
from llmkit.workspace import Workspace

# ~25k parameters: a step takes milliseconds, so 100-step runs stay in the seconds.
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
        "intermediate_size": 64}


@pytest.fixture(scope="session")
def lm_workspace(tmp_path_factory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("lm-ws")
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()[:120_000]
    source = root / "shakespeare.txt"
    source.write_text(text)
    ws = Workspace.open(root)
    registry = Registry.for_workspace(ws.root)
    prepare(DataConfig(inputs=[str(source)], name="tiny", task="lm", tokenizer="char", doc_split="blank-line",
                       splits={"val": 0.1, "test": 0.05}), ws, registry)
    registry.close()
    return root


def tiny_config(**overrides) -> PretrainConfig:
    base = dict(data="tiny", preset="nano", model=TINY, max_steps=20, batch_size=4, context=32, lr=3e-3,
                warmup_steps=5, eval_every=10, checkpoint_every=10, eval_max_batches=4, seed=7)
    base.update(overrides)
    return PretrainConfig(**base)


def run_cli(*args: str, workspace: Path, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMKIT_HOME": str(workspace)}
    proc = subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"llmkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


TINY_FLAGS = ["--preset", "nano", "--context", "32", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "5",
              "--seed", "7"]


def write_tiny_config(path: Path, **train) -> Path:
    import yaml

    body = {"train": {"model": TINY, "eval_max_batches": 4, **train}}
    path.write_text(yaml.safe_dump(body))
    return path
