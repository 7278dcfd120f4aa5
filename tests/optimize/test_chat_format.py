"""llmkit.optimize.chat_format: the template read from either file, the end-of-turn token, and the Ollama
translation per family (or a plain note when there is none)."""

from __future__ import annotations

import json

from llmkit.data.tokenizer import CHAT_TEMPLATE
from llmkit.models.pretrained import chat_template_of as template_of
from llmkit.optimize.chat_format import end_of_turn, modelfile, ollama_chat
from tests import tiny_lm


def test_template_from_either_file(tmp_path):
    assert template_of(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "old {{ x }}"}))
    assert template_of(tmp_path) == "old {{ x }}"
    (tmp_path / "chat_template.jinja").write_text("new {{ x }}")  # transformers 5 writes this one
    assert template_of(tmp_path) == "new {{ x }}"
    (tmp_path / "chat_template.jinja").unlink()
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "tool_use", "template": "t"},
                                                                                  {"name": "default", "template": "d"}]}))
    assert template_of(tmp_path) == "d"


def test_end_of_turn_is_the_special_token_after_a_reply():
    tok = tiny_lm.char_tokenizer()
    assert end_of_turn(tok) is None  # no template
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    assert end_of_turn(tok) == "<|end|>"


def test_families_translate_and_the_rest_say_so():
    chatml = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    assert ollama_chat(chatml).family == "chatml" and ollama_chat(chatml).stops[0] == "<|im_end|>"
    assert ollama_chat(CHAT_TEMPLATE).family == "llmkit"
    assert ollama_chat("<|start_header_id|>{{ x }}").family == "llama3"
    assert ollama_chat("<start_of_turn>{{ x }}").family == "gemma"
    assert ollama_chat("[INST] {{ x }} [/INST]").family == "mistral"
    odd = ollama_chat("### Human: {{ x }} ### Bot:")
    assert odd.family is None and "cannot translate" in odd.note
    text = modelfile("m.gguf", 256, odd)
    assert text.startswith("FROM ./m.gguf\n# llmkit cannot translate") and 'TEMPLATE """{{ .Prompt }}"""' in text
    assert "no chat template" in ollama_chat(None).note
