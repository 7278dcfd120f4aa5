"""Explain on a real byte-level BPE model of Chinese poems: characters shown whole, never as byte pieces.

A 400-entry byte-level BPE learns few Chinese characters, so most take two or three tokens, each a few
UTF-8 bytes of the character; the explanation joins them back and sums their attributions.
"""

from __future__ import annotations

import json
import re
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from llmkit.config import DataConfig, ExplainConfig, PretrainConfig
from llmkit.data.ingest import iter_records
from llmkit.data.pipeline import prepare
from llmkit.explain import explain_loaded, load_for_explain
from llmkit.explain.attribution import causal_subject, run_method
from llmkit.explain.pieces import display_groups
from llmkit.explain.report import html_report, terminal_text
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.conftest import TINY

POEM = "床前明月光，疑是地上霜。"
# Characters of GPT-2's byte alphabet that stand for bytes 0x80-0xff: what byte pieces look like shown raw.
MOJIBAKE = re.compile("[\u00a1-\u00ff\u0100-\u0143]")


@pytest.fixture(scope="module")
def zh_model(tmp_path_factory, shared_data: Path):
    root = tmp_path_factory.mktemp("zh-explain")
    records = islice(iter_records([str(shared_data / "chinese_poetry" / "poet.tang.0.json")], task="lm"), 400)
    source = root / "poems.jsonl"
    source.write_text("".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    ws = Workspace.open(root)
    registry = Registry.for_workspace(ws.root)
    prepare(DataConfig(inputs=[str(source)], name="zh", tokenizer="bpe:400"), ws, registry)
    from llmkit.train import pretrain

    pretrain(PretrainConfig(data="zh", name="zh-bpe", preset="nano", model=TINY, max_steps=4, batch_size=4, context=32,
                            warmup_steps=1, eval_every=4, checkpoint_every=4, eval_max_batches=1, precision="fp32"),
             ws, registry)
    return load_for_explain("zh-bpe", registry)


def _explain(loaded, **cfg):
    model, tokenizer, kind, labels, max_length, ref = loaded
    return explain_loaded(model, tokenizer, kind, POEM, ExplainConfig(**cfg), labels=labels, max_length=max_length, name=ref)


def test_characters_are_shown_whole_with_their_pieces_scores_summed(zh_model):
    model, tokenizer = zh_model[0], zh_model[1]
    raw = causal_subject(model, tokenizer, POEM, None, None)
    assert len(raw.tokens()) > len(POEM) + 1  # the small vocabulary does cut characters into byte pieces
    assert any(MOJIBAKE.search(t) for t in raw.tokens())
    exp = _explain(zh_model, method="occlusion")
    assert exp.special[0] and "".join(exp.tokens[1:]) == POEM
    assert not [t for t in exp.tokens[1:] if MOJIBAKE.search(t) or "\ufffd" in t]
    assert max(exp.pieces) >= 2 and sum(exp.pieces) == len(raw.tokens())
    scores = run_method(raw, "occlusion")[0]["scores"]
    ends = np.cumsum(exp.pieces)
    summed = [float(scores[end - k:end].sum()) for end, k in zip(ends, exp.pieces, strict=True)]
    assert exp.scores == pytest.approx(summed, abs=1e-6)
    assert max(abs(s) for s in exp.normalized) == pytest.approx(1.0)
    assert POEM in terminal_text(exp).plain
    html = html_report(exp)
    assert all(f">{c}</span>" in html for c in "床前明月光")
    assert json.loads(json.dumps(exp.to_dict(), ensure_ascii=False))["tokens"][1:] == list(exp.tokens[1:])


def test_attention_maps_are_merged_like_the_tokens(zh_model):
    exp = _explain(zh_model, method="attention")
    n = len(exp.tokens)
    assert exp.rollout.shape == (n, n) and exp.attentions.shape[-2:] == (n, n)
    assert np.allclose(exp.rollout.sum(-1), 1.0, atol=1e-4) and np.allclose(exp.attentions.sum(-1), 1.0, atol=1e-4)
    assert len(exp.to_dict()["attention"]["rollout"]) == n


def test_grouping_rules():
    a, b, c = "夜".encode(), "ñ".encode(), b"x"
    pieces = [a[:1], a[1:], c, b[:1], None, b[1:], a[:2] + c, a[:1], a[1:] + b]
    special = [False] * len(pieces)
    groups = display_groups(pieces, special)
    # a character split over two pieces joins; an unknown piece or a broken sequence stays alone (U+FFFD)
    assert [(s, e, t) for s, e, t in groups] == [(0, 2, "夜"), (2, 3, "x"), (3, 4, "\ufffd"), (4, 5, None),
                                                 (5, 6, "\ufffd"), (6, 7, "\ufffdx"), (7, 9, "夜ñ")]
    assert display_groups([a[:1], a[1:]], [False, True])[0][2] == "\ufffd"  # never joined across a special token


def test_a_target_holding_part_of_a_character_shows_its_bytes(zh_model):
    """The next token of a byte-level BPE may be the first bytes of a character: decoded alone it is '�' (the terminal,
    the HTML title and the JSON all said target '�'); its bytes say what it is."""
    from llmkit.explain.pieces import token_text

    tokenizer = zh_model[1]
    ids = tokenizer("龘", add_special_tokens=False)["input_ids"]  # a character the poems never use
    assert len(ids) > 1 and tokenizer.decode(ids[:1]) == "\ufffd"  # the small vocabulary cuts it
    first, rest = token_text(tokenizer, ids[0]), [token_text(tokenizer, i) for i in ids[1:]]
    assert re.fullmatch(r"(<0x[0-9A-F]{2}>)+", first) and "".join([first, *rest]).count("<0x") == len("龘".encode())
    assert token_text(tokenizer, tokenizer("a", add_special_tokens=False)["input_ids"][0]) == "a"
    for text in (POEM, "龘"):  # the explained target is shown so, whatever the next token is
        subject = causal_subject(zh_model[0], tokenizer, text, None, None)
        assert "\ufffd" not in subject.target and subject.target == token_text(tokenizer, subject.target_index)


def test_a_text_past_the_context_is_cut_at_a_whole_character(zh_model):
    """Cut from the left by tokens, the kept text began with the last bytes of a character: '�' where 床 was."""
    from llmkit.generate import encode_prompt

    model, tokenizer = zh_model[0], zh_model[1]
    context = model.config.max_position_embeddings
    cut_inside = 0
    for start in range(6):
        text = (POEM * 8)[start:]
        prompt = encode_prompt(tokenizer, text)
        assert len(prompt) > context
        cut_inside += tokenizer.decode(prompt[-(context - 1):][:4]).startswith("\ufffd")  # where a plain cut falls
        subject = causal_subject(model, tokenizer, text, None, None)
        assert "\ufffd" not in tokenizer.decode(subject.ids.tolist()) and len(subject.ids) <= context
        assert "longer than the model's context" in subject.warnings[0]
    assert cut_inside  # some of these texts do cut a character
