"""ONNX export: onnxruntime matches PyTorch at batch 1 and 2 for a causal LM and a classifier."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from llmkit.config import BenchModelConfig, ExportConfig
from llmkit.eval import bench_model
from llmkit.models.io import load_causal_lm, load_classifier
from llmkit.optimize.export import export
from llmkit.registry import Registry
from llmkit.workspace import Workspace


def _check(onnx_path: Path, net, vocab: int):
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch, seq in ((1, 5), (2, 11), (3, 20)):
        ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seq))
        mask = torch.ones_like(ids)
        with torch.no_grad():
            want = net(input_ids=ids, attention_mask=mask).logits.numpy()
        got = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-4


def test_causal_lm_exports_with_dynamic_batch_and_sequence(lm_workspace: Path, tiny_model):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    model, _ = export("tiny-lm", ExportConfig(format="onnx", name="tiny-onnx"), ws, reg)
    assert model.lineage["max_abs_logit_diff"] <= 1e-4
    lm, _ = load_causal_lm(tiny_model)
    _check(model.path / "model.onnx", lm, lm.config.vocab_size)
    speed = bench_model(model.id, BenchModelConfig(prompt_tokens=8, new_tokens=4, runs=2), ws, reg)
    assert speed.metrics["backend"] == "onnx" and speed.metrics["decode_tokens_per_s"] > 0


@pytest.mark.slow
def test_classifier_exports_too(lm_workspace: Path, sms_classifier):
    ws = Workspace.open(lm_workspace)
    model, _ = export("sms-clf", ExportConfig(format="onnx", name="sms-onnx"), ws, Registry.for_workspace(ws.root))
    clf, _, _ = load_classifier(sms_classifier)
    _check(model.path / "model.onnx", clf, clf.config.vocab_size)
