"""`llmkit demo --data FOLDER` on Chinese text: characters as tokens and poem-line prompts; English keeps BPE.

The whole demo on ../shared/data/chinese_poetry is measured by bench/chinese.py (three minutes of training);
here the choice it makes is checked on the real folders, in about a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.demo.scratch import CJK_PROMPTS, PROMPTS, data_config, is_mostly_cjk
from llmkit.errors import UserError


def test_the_chinese_poetry_folder_trains_on_characters_with_chinese_prompts(shared_data: Path):
    folder = shared_data / "chinese_poetry"
    cfg, prompts = data_config(folder, str(folder))
    assert cfg.tokenizer == "char" and cfg.inputs == [str(folder)] and cfg.name == "demo-chinese_poetry"
    assert prompts == CJK_PROMPTS and all(not p.isascii() for p in prompts)


def test_english_text_keeps_the_bpe_and_the_code_prompts(shared_data: Path, tmp_path: Path):
    text = shared_data / "tinyshakespeare" / "input.txt"
    assert not is_mostly_cjk(text)
    cfg, prompts = data_config(text, str(text))
    assert cfg.tokenizer == "bpe:2048" and prompts == PROMPTS
    mixed = tmp_path / "mixed.jsonl"  # a little Chinese in English text is still English
    mixed.write_text('{"text": "The poem 静夜思 by Li Bai is about the moon over the bed, and homesickness."}\n',
                     encoding="utf-8")
    assert not is_mostly_cjk(mixed)
    mixed.write_text('{"text": "床前明月光，疑是地上霜。Li Bai"}\n', encoding="utf-8")
    assert is_mostly_cjk(mixed)


def test_missing_data_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="demo.data = 'nope': no such file or folder"):
        data_config(tmp_path / "nope", "nope")
