"""A registry that goes away while a run trains: the run's checkpoint is kept and the one line says how to resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.config import DataConfig
from llmkit.data import prepare
from llmkit.registry import Registry, RegistryUnavailable
from llmkit.train import pretrain
from llmkit.train.checkpoint import latest_step
from llmkit.train.loop import watching
from llmkit.workspace import Workspace
from tests.conftest import tiny_config
from tests.registry.test_resilience_registry import _drop


def test_a_registry_gone_before_the_model_is_registered_says_how_to_resume(pg_database: str, tmp_path: Path,
                                                                            shared_data: Path) -> None:
    source = tmp_path / "shakespeare.txt"
    source.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:40_000])
    ws = Workspace.open(tmp_path / "ws")
    registry = Registry.for_workspace(ws.root, pg_database)
    prepare(DataConfig(inputs=[str(source)], name="tiny", task="lm", tokenizer="char", doc_split="blank-line",
                       splits={"val": 0.1, "test": 0.05}), ws, registry)

    def server_goes(_run: str, step: int, _evaluation) -> None:
        if step == 12:
            _drop(pg_database)

    with watching(server_goes), pytest.raises(RegistryUnavailable) as err:
        pretrain(tiny_config(name="gone"), ws, registry)
    message = str(err.value)
    run_dir = next((ws.root / "runs").glob("gone-*"))
    assert latest_step(run_dir) == 20  # trained to the end: only registering its model failed
    run_id = json.loads((run_dir / "run.json").read_text())["id"]
    assert "\n" not in message and "cannot open the registry at" in message
    assert message.endswith(f"continue with: llmkit train pretrain --resume {run_id}") and "step 20" in message, message
    registry.close()
