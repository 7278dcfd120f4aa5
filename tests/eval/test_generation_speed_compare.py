"""Generation metrics, speed measurement, compare, the harness hook, and the eval CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmkit.config import BenchModelConfig, EvalConfig
from llmkit.errors import UserError
from llmkit.eval import bench_model, compare, evaluate
from llmkit.eval.generation import generation_metrics
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


def test_generation_eval_on_a_chat_split_prompts_with_the_template_up_to_the_last_reply(lm_workspace: Path, tiny_model,
                                                                                       chat_data):
    from llmkit.generate import generate
    from llmkit.models.io import load_causal_lm, resolve_model

    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    report = evaluate("tiny-lm", EvalConfig(data=chat_data, split="val", max_examples=3, max_new_tokens=6), ws, reg)
    records = [json.loads(line) for line in (Path(reg.get(chat_data).path) / "records" / "val.jsonl").read_text().splitlines()]
    lm, tok = load_causal_lm(resolve_model("tiny-lm", reg))
    prompts, references = [], []
    for record in records[:3]:
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompts.append(tok.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True))
        references.append(messages[last]["content"])
    assert prompts[0].endswith("<|assistant|>\n") and references[0] not in prompts[0]
    predictions = [generate(lm, tok, p, max_new_tokens=6, temperature=0.0).text for p in prompts]
    assert [s["prompt"] for s in report.samples] == [p[-200:] for p in prompts]
    assert [s["reference"] for s in report.samples] == [r[:200] for r in references]
    assert [s["prediction"] for s in report.samples] == predictions
    expected = generation_metrics(predictions, references)
    for key in ("exact_match", "rougeL", "bleu", "examples"):
        assert report.metrics[key] == pytest.approx(expected[key]), key
    assert "perplexity" in report.metrics and report.split == "val"


def test_bench_model_measures_speed_and_size(lm_workspace: Path, tiny_model):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    report = bench_model("tiny-lm", BenchModelConfig(prompt_tokens=16, new_tokens=8, runs=4), ws, reg)
    m = report.metrics
    assert m["prefill_tokens_per_s"] > 0 and m["decode_tokens_per_s"] > 0
    assert m["latency_ms_p95"] >= m["latency_ms_p50"] >= m["ttft_ms_p50"] > 0
    assert m["size_mb"] == pytest.approx((tiny_model.path / "model.safetensors").stat().st_size / 2**20, abs=1e-3)
    assert m["peak_rss_mb"] > 50
    assert reg.get(report.id).metrics["decode_tokens_per_s"] == m["decode_tokens_per_s"]  # registered as measured
    with pytest.raises(UserError, match="exceeds the model's context"):
        bench_model("tiny-lm", BenchModelConfig(prompt_tokens=30, new_tokens=30), ws, reg)
    with pytest.raises(UserError, match="unknown backend 'gguf'; backends: llama.cpp, onnx, torch"):
        bench_model("tiny-lm", BenchModelConfig(backend="gguf", prompt_tokens=4, new_tokens=4), ws, reg)


def test_bench_model_refuses_an_encoder_in_one_line(tmp_path: Path, cli_here):
    """minilm-l6 (no head) went on to the LM decoder: "failed: KeyError: 'cache'", exit 1."""
    proc = cli_here("bench-model", "minilm-l6", workspace=tmp_path / "ws")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: minilm-l6 is an encoder (no language-model or classifier head): bench-model measures causal LMs and "
        "classifiers; fine-tune it into a classifier first (llmkit train classify --base minilm-l6 --data NAME)")


def test_bench_model_rates_are_the_tokens_it_ran_over_the_time_it_took(lm_workspace: Path, tiny_model):
    from llmkit.runtime.backends import BACKENDS, TorchBackend, register_backend

    calls = {"prefill": [], "steps": 0}

    class Counting(TorchBackend):
        """The torch backend, counting the tokens it is given and the decode steps it runs."""

        def prefill(self, ids, capacity):
            calls["prefill"].append(len(ids))
            return super().prefill(ids, capacity)

        def step(self, state, token):
            calls["steps"] += 1
            return super().step(state, token)

    register_backend("counting", Counting)
    try:
        ws = Workspace.open(lm_workspace)
        # One timed run: each figure is a single measurement, so they must agree exactly with each other.
        m = bench_model("tiny-lm", BenchModelConfig(backend="counting", prompt_tokens=16, new_tokens=8, runs=1, warmup=1),
                        ws, Registry.for_workspace(ws.root)).metrics
    finally:
        BACKENDS.pop("counting")
    assert calls == {"prefill": [16, 16], "steps": 2 * 7}  # warm-up + run: 16 prompt tokens, 1 + 7 new tokens
    prefill_s = m["ttft_ms_p50"] / 1000
    assert m["prefill_tokens_per_s"] == pytest.approx(16 / prefill_s, rel=1e-6)
    decode_s = m["latency_ms_p50"] / 1000 - prefill_s
    assert m["decode_tokens_per_s"] == pytest.approx(7 / decode_s, rel=1e-6)  # the 7 tokens after the first
    assert m["ttft_ms_p95"] == m["ttft_ms_p50"] and m["latency_ms_p95"] == m["latency_ms_p50"]
    assert (m["prompt_tokens"], m["new_tokens"], m["runs"]) == (16, 8, 1)


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
    assert again["sources"][0].endswith("(val)") and not again["warnings"]
    # Without --data each model's latest evaluation with the default settings, and what it was measured on is said:
    # an evaluation of one model on other records stood beside the other's, unlabelled.
    evaluate("compare-other", EvalConfig(data="tiny", split="test", max_examples=3), ws, reg)  # not the defaults
    evaluate("compare-other", EvalConfig(data="tiny", split="test"), ws, reg)
    evaluate("compare-other", EvalConfig(data="tiny", split="test", max_examples=3), ws, reg)
    loose = compare(["tiny-lm", "compare-other"], ws=ws, registry=reg)
    assert loose["sources"][1].endswith("(test)") and "default settings" not in loose["sources"][1]
    assert loose["sources"][0] != loose["sources"][1] and "different data" in loose["warnings"][0]


def test_compare_evaluates_a_model_that_is_not_registered_on_the_data_given(lm_workspace: Path, tiny_model, tmp_path):
    """A built-in or a folder (smollm2-135m beside its int8 version) was refused: "is not registered; compare works
    from the registry", though the gate takes it. With --data it is evaluated now; without, the error says so."""
    import shutil

    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    folder = tmp_path / "unregistered"
    shutil.copytree(tiny_model.path, folder)
    result = compare([str(folder), "tiny-lm"], data="tiny", split="val", ws=ws, registry=reg)
    ppl = result["rows"]["perplexity"]
    assert ppl[0] == pytest.approx(ppl[1], rel=1e-6) and result["sources"][0] == result["sources"][1]
    assert reg.get(result["evals"][0][0]).kind == "causal-lm"
    with pytest.raises(UserError, match=r"is not registered, so it has no evaluations to line up; pass --data NAME"):
        compare([str(folder)], ws=ws, registry=reg)


def test_harness_needs_lm_eval(lm_workspace: Path, tiny_model):
    try:
        import lm_eval  # noqa: F401
        pytest.skip("lm-eval is installed here; the missing-package message cannot be checked")
    except ImportError:
        pass
    with pytest.raises(UserError, match="pip install lm-eval"):
        evaluate("tiny-lm", EvalConfig(harness="hellaswag"), Workspace.open(lm_workspace), Registry.for_workspace(lm_workspace))


HARNESS_DOCS = [  # (question, choices, answer): short, so that no request reaches the tiny model's context of 32
    ("ROMEO: I", ["will go", "qzx vvk"], 0), ("First", ["zzzq qq", "Citizen"], 1), ("KING", ["HENRY", "xqxqx"], 0),
    ("JULIET:", ["O Romeo", "kkkkkkk"], 1), ("MENENIUS", ["the people", "the pzople"], 0),
    ("CORIOLANUS:", ["the matter", "thq mattqr"], 1),
]


def test_harness_runs_a_local_task_offline_and_reports_its_accuracy(lm_workspace: Path, tiny_model, tmp_path: Path,
                                                                    monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install lm-eval)")
    import torch

    from llmkit.models.io import load_causal_lm

    data = tmp_path / "choice.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in HARNESS_DOCS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_choice.yaml").write_text(
        "task: tiny_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: " + str(data) + "\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("HF_HOME", str(tmp_path / "hf"))):
        monkeypatch.setenv(name, value)
    out = run_cli("eval", "tiny-lm", "--harness", "tiny_choice", "--harness-include", str(tasks), "--harness-limit", "5",
                  "--json", workspace=lm_workspace)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    # lm-eval's multiple choice by hand: the choice whose " choice" continuation has the highest log-likelihood.
    lm, tok = load_causal_lm(tiny_model)
    right = 0
    for question, choices, answer in HARNESS_DOCS[:5]:
        context = tok(question, add_special_tokens=False)["input_ids"]
        scores = []
        for choice in choices:
            whole = tok(f"{question} {choice}", add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = lm(input_ids=torch.tensor([whole[:-1]])).logits[0].float().log_softmax(-1)
            scores.append(sum(float(logp[i - 1, whole[i]]) for i in range(len(context), len(whole))))
        right += int(np.argmax(scores)) == answer
    assert report["kind"] == "harness" and report["metrics"]["tiny_choice/sample_len"] == 5
    assert report["metrics"]["tiny_choice/acc"] == pytest.approx(right / 5)
    assert Registry.for_workspace(lm_workspace).get(report["id"]).metrics["tiny_choice/acc"] == pytest.approx(right / 5)


def test_eval_cli_prints_a_table_and_json(lm_workspace: Path, tiny_model, tmp_path: Path, cli_here):
    out = cli_here("eval", "tiny-lm", "--data", "tiny", "--split", "val", "--context", "32", "--out", str(tmp_path / "r.html"),
                  workspace=lm_workspace)
    assert out.returncode == 0, out.stderr
    assert "perplexity" in out.stdout and (tmp_path / "r.html").exists()
    js = cli_here("bench-model", "tiny-lm", "--prompt-tokens", "8", "--new-tokens", "4", "--runs", "2", "--json", workspace=lm_workspace)
    assert js.returncode == 0, js.stderr
    assert json.loads(js.stdout)["metrics"]["decode_tokens_per_s"] > 0
    table = cli_here("compare", "tiny-lm", workspace=lm_workspace)
    assert table.returncode == 0 and "decode_tokens_per_s" in table.stdout
    bad = cli_here("eval", "tiny-lm", "--data", "tiny", "--metrics", "rougeL", workspace=lm_workspace)
    assert bad.returncode == 2 and "metrics that do: perplexity, bits_per_byte" in bad.stderr
