"""Language-model evaluation: perplexity against an independent computation, windows, bad inputs."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch

from llmkit.config import DataConfig, EvalConfig
from llmkit.data import prepare
from llmkit.errors import UserError
from llmkit.eval import evaluate
from llmkit.eval.lm import windows
from llmkit.models.io import load_causal_lm
from llmkit.registry import Registry
from llmkit.workspace import Workspace


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model) -> Workspace:
    return Workspace.open(lm_workspace)


def _plain_perplexity(model_dir: Path, texts: list[str], context: int) -> float:
    """Non-overlapping windows, written out by hand: every target predicted from its own window only."""
    lm, tok = load_causal_lm(_model(model_dir))
    ids = []
    for text in texts:
        ids.append(tok.eos_token_id)
        ids.extend(tok.encode(text, add_special_tokens=False))
    nll, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, context):
            chunk = torch.tensor(ids[start: start + context + 1])
            logits = lm(input_ids=chunk[None, :-1]).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            nll -= float(logp[torch.arange(len(chunk) - 1), chunk[1:]].sum())
            n += len(chunk) - 1
    return math.exp(nll / n)


def _model(path: Path):
    from llmkit.models.io import resolve_model

    return resolve_model(str(path))


def test_perplexity_equals_an_independent_computation(ws, tiny_model):
    reg = Registry.for_workspace(ws.root)
    report = evaluate("tiny-lm", EvalConfig(data="tiny", split="test", context=32), ws, reg)
    records = [json.loads(line) for line in (Path(reg.get("tiny").path) / "records" / "test.jsonl").read_text().splitlines()]
    expected = _plain_perplexity(tiny_model.path, [r["text"] for r in records], 32)
    assert report.metrics["perplexity"] == pytest.approx(expected, rel=1e-4)
    assert report.metrics["stride"] == 32
    m = report.metrics
    assert m["bits_per_byte"] * m["bytes"] * math.log(2) == pytest.approx(m["loss"] * m["tokens"], rel=1e-9)


def test_overlapping_windows_score_every_token_exactly_once(ws):
    for n, context, stride in [(100, 32, 32), (100, 32, 8), (33, 32, 16), (5, 32, 4), (64, 16, 1)]:
        covered = []
        for start, length, first in windows(n, context, stride):
            assert length <= context and first < length
            covered += [start + 1 + i for i in range(first, length)]
            if stride < context and start > 0:
                assert first >= context - stride or start + length == n - 1  # each scored token sees that much history
        assert covered == list(range(1, n))
    reg = Registry.for_workspace(ws.root)
    wide = evaluate("tiny-lm", EvalConfig(data="tiny", split="test", context=32, stride=8), ws, reg)
    narrow = evaluate("tiny-lm", EvalConfig(data="tiny", split="test", context=32), ws, reg)
    assert wide.metrics["tokens"] == narrow.metrics["tokens"]
    assert wide.metrics["perplexity"] != narrow.metrics["perplexity"]  # the same tokens, scored with other histories


def test_eval_is_registered_with_its_model_and_dataset(ws, tiny_model):
    reg = Registry.for_workspace(ws.root)
    report = evaluate("tiny-lm", EvalConfig(data="tiny", split="val", context=32), ws, reg)
    parents = dict(reg.parents(report.id))
    assert parents["evaluates"].id == tiny_model.id and parents["on_dataset"].name == "tiny"
    folder = Path(report.path)
    assert json.loads((folder / "report.json").read_text())["id"] == report.id
    assert "perplexity" in (folder / "report.html").read_text()


def test_shards_need_the_same_tokenizer_and_match_text_when_they_have_it(ws, tmp_path_factory, shared_data: Path):
    reg = Registry.for_workspace(ws.root)
    via_shards = evaluate("tiny-lm", EvalConfig(data="tiny", split="test", context=32, source="shards"), ws, reg)
    via_text = evaluate("tiny-lm", EvalConfig(data="tiny", split="test", context=32), ws, reg)
    assert via_shards.metrics["perplexity"] == pytest.approx(via_text.metrics["perplexity"], rel=0.05)
    assert via_shards.metrics["bits_per_byte"] == pytest.approx(via_text.metrics["bits_per_byte"], rel=0.05)
    # a record limit does not apply to the shards: it divided the whole split's loss by the first records' bytes
    with pytest.raises(UserError, match=r"eval.max_examples = 2 limits records.*drop --max-examples or use --source text"):
        evaluate("tiny-lm", EvalConfig(data="tiny", split="test", context=32, source="shards", max_examples=2), ws, reg)
    source = tmp_path_factory.mktemp("bpe") / "poems.txt"
    source.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:20_000])
    prepare(DataConfig(inputs=[str(source)], name="bpe-text", task="lm", tokenizer="bpe:300", doc_split="blank-line"), ws, reg)
    with pytest.raises(UserError, match="different tokenizer.*--source text"):
        evaluate("tiny-lm", EvalConfig(data="bpe-text", split="test", source="shards"), ws, reg)


def test_bad_inputs(ws, chat_data):
    reg = Registry.for_workspace(ws.root)
    with pytest.raises(UserError, match=r"eval.split = 'test': dataset chats:v\d+ has no records in that split; splits with records: train \(\d+\), val"):
        evaluate("tiny-lm", EvalConfig(data="chats", split="test"), ws, reg)
    with pytest.raises(UserError, match="accuracy does not fit a causal-lm model.*metrics that do: perplexity, bits_per_byte"):
        evaluate("tiny-lm", EvalConfig(data="tiny", metrics=["accuracy"]), ws, reg)
    with pytest.raises(UserError, match="stride = 64 is larger than the context"):
        evaluate("tiny-lm", EvalConfig(data="tiny", context=32, stride=64), ws, reg)
    with pytest.raises(UserError, match="eval.data is not set"):
        evaluate("tiny-lm", EvalConfig(), ws, reg)
    with pytest.raises(UserError, match=r"eval.data = 'nope.jsonl': no such file; give a \{prompt, reference\} .jsonl file"):
        evaluate("tiny-lm", EvalConfig(data="nope.jsonl"), ws, reg)  # it said "no dataset named 'nope.jsonl'"
    with tempfile.TemporaryDirectory(suffix=".jsonl") as folder:  # it said "no such file" of a folder that is there
        with pytest.raises(UserError, match=r"eval.data = '.*\.jsonl': a folder, not a file; give a \{prompt, reference\}"):
            evaluate("tiny-lm", EvalConfig(data=folder), ws, reg)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as text:  # a text file: what eval reads instead, how to register it
        with pytest.raises(UserError, match=r"eval reads a registered dataset or a .jsonl file .*llmkit data prepare"):
            evaluate("tiny-lm", EvalConfig(data=text.name), ws, reg)
