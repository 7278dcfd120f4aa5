"""The before/after table of a GGUF export of a model fine-tuned on chat data, and `llmkit eval` of that GGUF on
the chat data: the GGUF has no torch forward, so its perplexity comes from llama.cpp's logits and its answers
from llama.cpp's decoding (issue 18 item 5: both used to stop at `'GgufLM' object has no attribute 'forward'`).

At f32 the GGUF computes what the torch model computes, so its figures are the torch model's: the same
perplexity (to float rounding) and the same greedy answer to every conversation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmkit.config import EvalConfig, ExportConfig, SftConfig
from llmkit.eval import evaluate
from llmkit.optimize.export import export
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.conftest import run_cli

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model, chat_data) -> Workspace:
    return Workspace.open(lm_workspace)


@pytest.fixture(scope="module")
def chat_tuned(ws, tiny_model, tmp_path_factory):
    """tiny-lm with a 192-token context (room for a chat prompt and its answer; RoPE has no trained length), fully
    fine-tuned on the chat data for a few steps: its lineage names the chat dataset, which the export table
    evaluates on."""
    import shutil

    from llmkit.train.supervised import sft

    base = tmp_path_factory.mktemp("table-base") / "tiny-lm-192"
    shutil.copytree(tiny_model.path, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 192}))
    return sft(SftConfig(base=str(base), data="chats", method="full", max_steps=6, batch_size=4, max_length=192, lr=3e-3,
                         eval_every=6, checkpoint_every=6, eval_max_examples=4, seed=5, skip_bad=True, name="table-chat"),
               ws, Registry.for_workspace(ws.root))


@pytest.fixture(scope="module")
def exported(ws, chat_tuned):
    return export(chat_tuned.name, ExportConfig(quant="f32", name="table-chat-f32", table=False), ws, Registry.for_workspace(ws.root))


def test_export_table_measures_the_gguf_on_the_chat_data(ws, chat_tuned):
    model, rows = export(chat_tuned.name, ExportConfig(quant="f32", name="table-chat-f32-table", eval_max_examples=3), ws,
                         Registry.for_workspace(ws.root))
    before, after = rows
    assert (before["stage"], after["stage"]) == ("before", "after") and after["model"] == model.ref
    assert json.loads((model.path / "llmkit.json").read_text())["dataset"]["ref"].startswith("chats")
    for row in rows:
        assert row["size_mb"] > 0 and row["decode_tokens_per_s"] > 0
    assert isinstance(after["perplexity"], float) and after["perplexity"] > 1
    assert after["perplexity"] == pytest.approx(before["perplexity"], rel=1e-4)  # f32: llama.cpp's logits are torch's


def test_eval_of_the_gguf_on_chat_data_generates_on_llama_cpp(ws, exported, chat_tuned):
    model, _ = exported
    args = ["--data", "chats", "--split", "val", "--max-examples", "3", "--max-new-tokens", "12"]
    out = run_cli("eval", model.name, *args, "--json", workspace=ws.root)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    metrics = report["metrics"]
    assert metrics["examples"] == 3 and {"perplexity", "exact_match", "rougeL", "bleu"} <= set(metrics)
    # The torch model's own evaluation: the same prompts, and at f32 the same greedy answers.
    torch_report = evaluate(chat_tuned.name, EvalConfig(data="chats", split="val", max_examples=3, max_new_tokens=12), ws,
                            Registry.for_workspace(ws.root))
    assert [s["prompt"] for s in report["samples"]] == [s["prompt"] for s in torch_report.samples]
    assert [s["prediction"] for s in report["samples"]] == [s["prediction"] for s in torch_report.samples]
    assert any(s["prediction"] for s in report["samples"])
    for key in ("rougeL", "bleu", "exact_match"):
        assert metrics[key] == pytest.approx(torch_report.metrics[key]), key
    assert metrics["perplexity"] == pytest.approx(torch_report.metrics["perplexity"], rel=1e-4)


def test_eval_of_the_gguf_on_a_prompt_reference_file(ws, exported, chat_tuned, tmp_path):
    model, _ = exported
    items = tmp_path / "qa.jsonl"
    items.write_text("\n".join(json.dumps({"prompt": p, "reference": r}) for p, r in
                               [("What is the sky?", "Blue."), ("Say hi", "Hi")]) + "\n")
    reg = Registry.for_workspace(ws.root)
    cfg = EvalConfig(data=str(items), max_new_tokens=8, chat=True)
    on_gguf, on_torch = evaluate(model.name, cfg, ws, reg), evaluate(chat_tuned.name, cfg, ws, reg)
    assert on_gguf.kind == "generation" and on_gguf.metrics["examples"] == 2
    assert [s["prediction"] for s in on_gguf.samples] == [s["prediction"] for s in on_torch.samples]
