"""A Chinese dataset's top tokens, as `data report` prints them: a byte-level BPE piece holding part of a character
shows its bytes (<0xE5>), as explain does; decoded alone, every such piece read '�', so the list was
'�':41 '�':33 ... with no way to tell the tokens apart."""

from __future__ import annotations

import json
import re
from pathlib import Path

from llmkit.config import DataConfig
from llmkit.data import prepare
from llmkit.data.tokenizer import load_tokenizer
from llmkit.registry import Registry
from llmkit.workspace import Workspace

LINES = ["今天好开心😀，一起去吃火锅吧！", "電腦軟體與網際網路的發展非常迅速。", "我用Python写了一个script，运行在Linux上。",
         "价格是123元，折扣85%。", "床前明月光，疑是地上霜。举头望明月，低头思故乡。"]


def test_top_tokens_of_a_chinese_dataset_show_byte_pieces_as_bytes(tmp_path: Path):
    source = tmp_path / "混合.jsonl"
    source.write_text("".join(json.dumps({"text": f"{line} 第{i}条"}, ensure_ascii=False) + "\n"
                              for i in range(40) for line in LINES), encoding="utf-8")
    ws = Workspace.open(tmp_path / "ws")
    ds = prepare(DataConfig(inputs=[str(source)], name="mix", tokenizer="bpe:300", dedupe="none"), ws,
                 Registry.for_workspace(ws.root))
    shown = [tok for tok, _ in ds.manifest["top_tokens"]]
    assert not any("\ufffd" in tok for tok in shown), shown
    assert len(set(shown)) == len(shown)  # distinct tokens, distinct texts
    assert any(re.fullmatch(r"(<0x[0-9A-F]{2}>)+", tok) for tok in shown), shown  # 300 entries do cut characters
    assert "，" in shown or "。" in shown


def _bytes_shown(text: str) -> bytes:
    return b"".join(bytes([int(b, 16)]) if b else whole.encode() for b, whole in re.findall(r"<0x([0-9A-F]{2})>|(.)", text, re.S))


def test_the_pieces_of_a_poem_shown_one_by_one_spell_its_bytes(tmp_path: Path):
    poem = "床前明月光，疑是地上霜。"
    source = tmp_path / "poem.txt"
    source.write_text((poem + "\n") * 50 + "举头望明月，低头思故乡。\n" * 50, encoding="utf-8")
    ws = Workspace.open(tmp_path / "ws")
    ds = prepare(DataConfig(inputs=[str(source)], name="poem", tokenizer="bpe:270", dedupe="none", doc_split="line"),
                 ws, Registry.for_workspace(ws.root))
    tokenizer = load_tokenizer(ds.path / "tokenizer")
    shown = [tokenizer.token_text(i) for i in tokenizer.backend.encode("霜月故乡" + poem).ids]
    assert not any("\ufffd" in t for t in shown) and any("<0x" in t for t in shown), shown
    assert b"".join(_bytes_shown(t) for t in shown) == ("霜月故乡" + poem).encode()
