"""Generation metrics, speed measurement, compare, the harness hook, and the eval CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.config import BenchModelConfig, EvalConfig
from llmkit.errors import UserError
from llmkit.eval import bench_model, compare, evaluate
from llmkit.eval.generation import generation_metrics
from llmkit.eval.speed import percentile
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.conftest import run_cli


def test_generation_metrics_on_a_small_set():
    predictions = ["the cat sat", "a b x d", "hello"]
    references = ["the cat sat", "a b c d", "goodbye"]
    m = generation_metrics(predictions, references)
    assert m["exact_match"] == pytest.approx(1 / 3)
    # ROUGE-L F1: 1; LCS 3 of 4 tokens both ways -> 0.75; nothing in common -> 0.
    assert m["rougeL"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert generation_metrics(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == pytest.approx(100.0)
    assert 0 < m["bleu"] < 100


def test_generation_eval_on_a_prompt_reference_file(lm_workspace: Path, tiny_model, tmp_path: Path):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    items = tmp_path / "qa.jsonl"
    items.write_text("\n".join(json.dumps({"prompt": p, "reference": r}) for p, r in
                               [("ROMEO:", "O, speak again"), ("KING", " HENRY"), ("First", " Citizen:")]) + "\n")
    report = evaluate("tiny-lm", EvalConfig(data=str(items), max_new_tokens=6), ws, reg)
    assert report.kind == "generation" and report.metrics["examples"] == 3
    assert {"exact_match", "rougeL", "bleu"} <= set(report.metrics)
    assert len(report.samples) == 3 and all(isinstance(s["prediction"], str) for s in report.samples)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(UserError, match=rf"{bad}:2: expected an object with 'prompt' and 'reference'"):
        evaluate("tiny-lm", EvalConfig(data=str(bad)), ws, reg)


def test_bench_model_measures_speed_and_size(lm_workspace: Path, tiny_model):
    ws = Workspace.open(lm_workspace)
    report = bench_model("tiny-lm", BenchModelConfig(prompt_tokens=16, new_tokens=8, runs=4), ws, Registry.for_workspace(ws.root))
    m = report.metrics
    assert m["prefill_tokens_per_s"] > 0 and m["decode_tokens_per_s"] > 0
    assert m["latency_ms_p95"] >= m["latency_ms_p50"] >= m["ttft_ms_p50"] > 0
    assert m["size_mb"] == pytest.approx((tiny_model.path / "model.safetensors").stat().st_size / 2**20, abs=1e-3)
    assert m["peak_rss_mb"] > 50
    with pytest.raises(UserError, match="exceeds the model's context"):
        bench_model("tiny-lm", BenchModelConfig(prompt_tokens=30, new_tokens=30), ws, Registry.for_workspace(ws.root))
    with pytest.raises(UserError, match="unknown backend 'gguf'; backends: llama.cpp, onnx, torch"):
        bench_model("tiny-lm", BenchModelConfig(backend="gguf", prompt_tokens=4, new_tokens=4), ws, Registry.for_workspace(ws.root))
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


def test_compare_lines_up_models_and_evaluates_what_is_missing(lm_workspace: Path, tiny_model):
    from llmkit.train import pretrain
    from tests.conftest import tiny_config

    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    other = pretrain(tiny_config(name="compare-other", max_steps=10), ws, reg)
    before = len(reg.list("eval"))
    result = compare(["tiny-lm", "compare-other"], data="tiny", split="val", ws=ws, registry=reg)
    assert result["models"] == [tiny_model.ref, other.ref]
    ppl = result["rows"]["perplexity"]
    assert len(ppl) == 2 and all(v > 1 for v in ppl) and ppl[0] < ppl[1]  # 60 steps beat 10
    assert len(reg.list("eval")) == before + 2
    again = compare(["tiny-lm", "compare-other"], data="tiny", split="val", ws=ws, registry=reg)
    assert len(reg.list("eval")) == before + 2 and again["rows"]["perplexity"] == ppl  # reused, not re-run


def test_harness_needs_lm_eval(lm_workspace: Path, tiny_model):
    try:
        import lm_eval  # noqa: F401
        pytest.skip("lm-eval is installed here; the missing-package message cannot be checked")
    except ImportError:
        pass
    with pytest.raises(UserError, match="pip install lm-eval"):
        evaluate("tiny-lm", EvalConfig(harness="hellaswag"), Workspace.open(lm_workspace), Registry.for_workspace(lm_workspace))


def test_eval_cli_prints_a_table_and_json(lm_workspace: Path, tiny_model, tmp_path: Path):
    out = run_cli("eval", "tiny-lm", "--data", "tiny", "--split", "val", "--context", "32", "--out", str(tmp_path / "r.html"),
                  workspace=lm_workspace)
    assert out.returncode == 0, out.stderr
    assert "perplexity" in out.stdout and (tmp_path / "r.html").exists()
    js = run_cli("bench-model", "tiny-lm", "--prompt-tokens", "8", "--new-tokens", "4", "--runs", "2", "--json", workspace=lm_workspace)
    assert js.returncode == 0, js.stderr
    assert json.loads(js.stdout)["metrics"]["decode_tokens_per_s"] > 0
    table = run_cli("compare", "tiny-lm", workspace=lm_workspace)
    assert table.returncode == 0 and "decode_tokens_per_s" in table.stdout
    bad = run_cli("eval", "tiny-lm", "--data", "tiny", "--metrics", "rougeL", workspace=lm_workspace)
    assert bad.returncode == 2 and "metrics that do: perplexity, bits_per_byte" in bad.stderr
