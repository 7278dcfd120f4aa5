"""Pretraining end to end: registered model, lineage, loading without llmkit, logging, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.train import pretrain
from llmkit.workspace import Workspace
from tests.conftest import run_cli, tiny_config


def test_pretrain_registers_a_model_linked_to_its_run_and_dataset(lm_workspace: Path):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    model = pretrain(tiny_config(name="lineage-check"), ws, reg)
    assert (model.path / "model.safetensors").exists()
    assert (model.path / "tokenizer.json").exists()
    lineage = json.loads((model.path / "llmkit.json").read_text())
    assert lineage["dataset"]["ref"].startswith("tiny:v")
    parents = {rel: rec for rel, rec in reg.parents(model.id)}
    assert parents["produced_by"].type == "run" and parents["trained_on"].type == "dataset"
    run = parents["produced_by"]
    assert dict(reg.parents(run.id))["trained_on"].id == parents["trained_on"].id
    run_dir = Path(run.path)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 21))
    assert any("val_loss" in r for r in rows)
    assert (run_dir / "plots" / "loss.png").stat().st_size > 1000
    assert (run_dir / "best" / "model.safetensors").exists()
    # Training did something: the final val loss is below a uniform guess over the vocabulary.
    import math

    vocab = lineage["config"] and json.loads((model.path / "config.json").read_text())["vocab_size"]
    assert lineage["metrics"]["val_loss"] < math.log(vocab)


def test_model_loads_with_plain_transformers_in_a_process_without_llmkit(lm_workspace: Path):
    ws = Workspace.open(lm_workspace)
    model = pretrain(tiny_config(name="portable", max_steps=10), ws, Registry.for_workspace(ws.root))
    script = f"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained({str(model.path)!r})
t = AutoTokenizer.from_pretrained({str(model.path)!r})
ids = t("ROMEO:", return_tensors="pt").input_ids
out = m.generate(ids, max_new_tokens=5, do_sample=False)
assert out.shape[1] == ids.shape[1] + 5, out.shape
assert not any(name.startswith("llmkit") for name in sys.modules), "llmkit was imported"
print(type(m).__name__, repr(t.decode(out[0])))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("LlamaForCausalLM")


def test_unknown_preset_is_a_clear_user_error(lm_workspace: Path):
    proc = run_cli("train", "pretrain", "--data", "tiny", "--preset", "huge", workspace=lm_workspace)
    assert proc.returncode == 2
    assert "train.preset" in proc.stderr and "nano" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_pretraining_on_a_non_lm_dataset_says_which_task_it_needs(lm_workspace: Path, tmp_path: Path):
    rows = tmp_path / "labels.jsonl"
    rows.write_text("\n".join(json.dumps({"text": f"message number {i} " * 3, "label": "ab"[i % 2]}) for i in range(60)))
    run_cli("data", "prepare", str(rows), "--name", "labels", "--task", "classify", "--tokenizer", "char",
            workspace=lm_workspace, check=True)
    proc = run_cli("train", "pretrain", "--data", "labels", workspace=lm_workspace)
    assert proc.returncode == 2
    assert "classify" in proc.stderr and "--task lm" in proc.stderr


def test_context_longer_than_the_data_is_a_clear_error(lm_workspace: Path):
    ws = Workspace.open(lm_workspace)
    with pytest.raises(UserError, match="train.context"):
        pretrain(tiny_config(context=1_000_000), ws, Registry.for_workspace(ws.root))


def test_an_empty_val_split_asks_for_a_larger_val_share_not_a_shorter_context(tmp_path: Path):
    from llmkit.config import DataConfig
    from llmkit.data.pipeline import prepare

    ws = Workspace.open(tmp_path / "ws")
    reg = Registry.for_workspace(ws.root)
    (tmp_path / "t.txt").write_text("\n\n".join(f"line {i} of a small text" for i in range(50)))
    prepare(DataConfig(inputs=[str(tmp_path / "t.txt")], name="tiny", tokenizer="char", doc_split="blank-line",
                       splits={"val": 0, "test": 0}), ws, reg)
    with pytest.raises(UserError, match=r"longer than the whole val split of tiny:v1 \(0 tokens\); give val a larger "
                                        r"share \(llmkit data prepare \.\.\. --splits-val 0\.1\) or more data$"):
        pretrain(tiny_config(), ws, reg)


def test_missing_dataset_names_the_known_ones(lm_workspace: Path):
    proc = run_cli("train", "pretrain", "--data", "nope", workspace=lm_workspace)
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "tiny" in proc.stderr


def test_early_stopping_ends_the_run_before_max_steps(lm_workspace: Path):
    ws = Workspace.open(lm_workspace)
    # lr 0 never improves the val loss after the first evaluation.
    model = pretrain(tiny_config(name="early", lr=1e-9, min_lr=0.0, max_steps=200, eval_every=5, early_stopping=2),
                     ws, Registry.for_workspace(ws.root))
    assert model.lineage["metrics"]["stopped_early"] is True
    assert model.lineage["metrics"]["steps"] < 200
