"""ONNX export: onnxruntime matches PyTorch at batch 1 and 2 for a causal LM and a classifier; a mismatch writes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from llmkit.config import BenchModelConfig, EvalConfig, ExportConfig
from llmkit.errors import UserError
from llmkit.eval import bench_model, evaluate
from llmkit.models.io import load_causal_lm, load_classifier, save_model
from llmkit.optimize.export import export
from llmkit.registry import Registry
from llmkit.workspace import TMP_PREFIX, Workspace
from tests.conftest import run_cli


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
    model, rows = export("tiny-lm", ExportConfig(format="onnx", name="tiny-onnx"), ws, reg)
    assert model.lineage["max_abs_logit_diff"] <= 1e-4
    # the before/after table every compression prints (ONNX printed none), its perplexity from onnxruntime's logits
    assert [r["stage"] for r in rows] == ["before", "after"] and all(r["decode_tokens_per_s"] > 0 for r in rows)
    assert rows[1]["size_mb"] > 0 and rows[1]["perplexity"] == pytest.approx(rows[0]["perplexity"], rel=1e-4)
    lm, _ = load_causal_lm(tiny_model)
    _check(model.path / "model.onnx", lm, lm.config.vocab_size)
    speed = bench_model(model.id, BenchModelConfig(prompt_tokens=8, new_tokens=4, runs=2), ws, reg)
    assert speed.metrics["backend"] == "onnx" and speed.metrics["decode_tokens_per_s"] > 0
    onnx_bytes = sum(f.stat().st_size for f in model.path.glob("model.onnx*"))
    assert abs(speed.metrics["size_mb"] - onnx_bytes / 2**20) <= 0.01 * onnx_bytes / 2**20  # it said 0.0
    quality = EvalConfig(data="tiny", split="val", context=16, max_examples=8)  # eval on onnxruntime: 'no weights' before
    assert evaluate(model.id, quality, ws, reg).metrics["perplexity"] == pytest.approx(
        evaluate("tiny-lm", quality, ws, reg).metrics["perplexity"], rel=1e-4)
    with pytest.raises(UserError, match=r"is an ONNX export; a causal language model needs a Hugging Face folder .* exported from"):
        load_causal_lm(model)  # generate and the rest
    with pytest.raises(UserError, match=r"tiny-lm:v\d+ is not an ONNX export .* llmkit export tiny-lm:v\d+ --format onnx"):
        bench_model("tiny-lm", BenchModelConfig(backend="onnx", prompt_tokens=8, new_tokens=4, runs=1), ws, reg)
    # the advice names the model the export came from: exporting the ONNX file to GGUF fails in turn
    with pytest.raises(UserError, match=r"tiny-onnx:v\d+ is not a GGUF export .*make one with: llmkit export tiny-lm:v\d+ "
                                        r"--format gguf"):
        bench_model(model.id, BenchModelConfig(backend="llama.cpp", prompt_tokens=8, new_tokens=4, runs=1), ws, reg)


@pytest.mark.slow
def test_classifier_exports_too_and_eval_predict_and_bench_run_it_on_onnxruntime(lm_workspace: Path, sms_classifier):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    model, rows = export("sms-clf", ExportConfig(format="onnx", name="sms-onnx", eval_max_examples=60), ws, reg)
    clf, _, labels = load_classifier(sms_classifier)
    _check(model.path / "model.onnx", clf, clf.config.vocab_size)
    # the before/after table scores the export from onnxruntime's logits (it printed sizes only): same accuracy
    assert [r["stage"] for r in rows] == ["before", "after"] and rows[1]["accuracy"] == rows[0]["accuracy"] > 0.5
    dataset = sms_classifier.lineage["dataset"]["id"]
    quality = EvalConfig(data=dataset, split="val", max_examples=60)
    on_onnx, on_torch = evaluate(model.id, quality, ws, reg).metrics, evaluate("sms-clf", quality, ws, reg).metrics
    assert on_onnx["macro_f1"] == on_torch["macro_f1"] and on_onnx["ece"] == pytest.approx(on_torch["ece"], abs=1e-4)
    texts = ["WINNER!! Claim your free prize now, call 09061701461", "see you at lunch tomorrow?"]
    from llmkit.predict import predict

    got, want = predict(model.id, texts, registry=reg), predict("sms-clf", texts, registry=reg)
    assert [g["label"] for g in got] == [w["label"] for w in want] and list(got[0]["probabilities"]) == labels
    for g, w in zip(got, want, strict=True):
        assert g["score"] == pytest.approx(w["score"], abs=1e-4)
    speed = bench_model(model.id, BenchModelConfig(prompt_tokens=16, runs=2), ws, reg).metrics
    assert speed["texts_per_s"] > 0 and speed["size_mb"] > 1  # the graph's size, not the source's
    assert speed["backend"] == "onnx"
    # another --backend was ignored for a classifier (torch measured, no backend said)
    with pytest.raises(UserError, match=r"sms-clf:v\d+ is a classifier that runs on torch, not onnx; make an ONNX one"):
        bench_model("sms-clf", BenchModelConfig(backend="onnx", prompt_tokens=16, runs=1), ws, reg)
    with pytest.raises(UserError, match=r"is a classifier that runs on onnx, not llama.cpp"):
        bench_model(model.id, BenchModelConfig(backend="llama.cpp", prompt_tokens=16, runs=1), ws, reg)
    # --quant q8_0 was ignored (fp32 written without a word): onnxruntime's dynamic int8, a quarter of the size
    small, rows8 = export("sms-clf", ExportConfig(format="onnx", quant="q8_0", eval_max_examples=60), ws, reg)
    assert small.name == "sms-clf-onnx-int8" and small.lineage["quant"] == "int8-dynamic"
    assert (small.path / "model.onnx").stat().st_size < 0.35 * (model.path / "model.onnx").stat().st_size
    assert abs(rows8[1]["accuracy"] - rows[1]["accuracy"]) <= 0.05 and small.lineage["int8_max_abs_logit_diff"] < 0.5
    with pytest.raises(UserError, match=r"export.quant = 'q4_0': an ONNX export is f32 or q8_0"):
        export("sms-clf", ExportConfig(format="onnx", quant="q4_0"), ws, reg)


@pytest.mark.slow  # the CLI in a subprocess and a real export: tens of seconds
def test_a_parity_failure_writes_nothing_registers_nothing_and_says_so_in_one_line(tmp_path: Path, tiny_model):
    # A real model that onnxruntime cannot match: the final norm scaled by 1e6 makes logits of ~1e6, where
    # the two runtimes' float32 rounding (~1e-7 relative, different kernels) is far above the 1e-4 tolerance.
    lm, tokenizer = load_causal_lm(tiny_model)
    with torch.no_grad():
        lm.model.norm.weight.mul_(1e6)
    loud = save_model(lm, tokenizer, tmp_path / "loud", {"task": "causal-lm"})
    root = tmp_path / "ws"
    out = run_cli("export", str(loud), "--format", "onnx", "--no-table", "--name", "loud-onnx", workspace=root)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()  # one line, no traceback, no exporter noise
    assert len(lines) == 1 and lines[0].startswith("error: ONNX export of loud disagrees with PyTorch by"), out.stderr
    assert lines[0].endswith("not written"), out.stderr
    models = root / "models"
    left = sorted(p.name for p in models.iterdir()) if models.exists() else []
    assert left == [], left  # neither the export folder nor a TMP_PREFIX temp folder
    assert not list(root.rglob(f"{TMP_PREFIX}*")) and not list(root.rglob("model.onnx"))
    ws = Workspace.open(root)
    assert Registry.for_workspace(ws.root).list() == []


def test_an_export_or_an_encoder_is_refused_before_the_export_says_it_starts(tmp_path: Path, lm_workspace: Path, tiny_model):
    """An ONNX export of an ONNX export, or of minilm-l6 (an encoder), printed "exporting ... about 90 s" and then an
    error about evaluating; now one line about exporting, before anything is said or written."""
    import io
    import shutil

    from rich.console import Console

    folder = tmp_path / "already-onnx"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model.path / name, folder / name)
    (folder / "model.onnx").write_bytes(b"\x08\x07")
    ws = Workspace.open(tmp_path / "ws")
    reg = Registry.for_workspace(ws.root)
    said = io.StringIO()
    with pytest.raises(UserError, match=r"already-onnx is an ONNX export; ONNX export needs a Hugging Face folder"):
        export(str(folder), ExportConfig(format="onnx", table=False), ws, reg, console=Console(file=said))
    with pytest.raises(UserError, match=r"^minilm-l6 is an encoder .*: ONNX export takes causal LMs and classifiers; "
                                        r"fine-tune it into one first \(llmkit train classify --base minilm-l6"):
        export("minilm-l6", ExportConfig(format="onnx", table=False), ws, reg, console=Console(file=said))
    assert said.getvalue() == "" and list((ws.root / "models").iterdir()) == [] and reg.list() == []
