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


def test_end_of_turn_is_found_after_a_space_and_a_greedy_model_keeps_ollamas_sampling():
    # Llama 2 style templates write " </s>" after a reply; a generation_config without sampling asks for none
    tok = tiny_lm.char_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
                         "{% else %} {{ m['content'] }} </s>{% endif %}{% endfor %}")
    assert end_of_turn(tok) == "</s>"
    chat = ollama_chat(tok.chat_template)
    greedy = modelfile("m.gguf", 64, chat, {"do_sample": False, "temperature": 0.6, "top_p": 0.9})
    assert "temperature" not in greedy and "top_p" not in greedy
    assert "PARAMETER temperature 0.6" in modelfile("m.gguf", 64, chat, {"do_sample": True, "temperature": 0.6})


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


# Each family's own Jinja template (as its models ship it, bos left to the tokenizer) and what it is checked on.
JINJA = {
    "llmkit": CHAT_TEMPLATE,
    "llama3": ("{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim"
               " + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant"
               "<|end_header_id|>\\n\\n' }}{% endif %}"),
    # Gemma 2/3: a system message is the first user turn's prefix
    "gemma": ("{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\\n\\n' %}"
              "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = messages %}"
              "{% endif %}{% for m in loop_messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
              "{{ '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') + m['content'] | trim + "
              "'<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"),
    # Mistral: a system message goes in the first [INST]
    "mistral": ("{% if messages[0]['role'] == 'system' %}{% set prefix = messages[0]['content'] + '\\n\\n' %}"
                "{% set loop_messages = messages[1:] %}{% else %}{% set prefix = '' %}{% set loop_messages = messages %}"
                "{% endif %}{% for m in loop_messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + (prefix if loop.first "
                "else '') + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + '</s>' }}{% endif %}{% endfor %}"),
}
CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
]


def _jinja(template: str, messages: list[dict]) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template, add_generation_prompt=True)
    return rendered[0]


def test_the_modelfile_template_renders_in_ollama_what_the_model_was_trained_on():
    """Ollama passes system messages in .Messages and in .System: a template printing both (ChatML, Llama 3, llmkit's)
    sent the system prompt twice, and Mistral's made it an assistant turn. Rendered here with Ollama's rules."""
    from tests.optimize.go_template import ollama_render

    for family, jinja in JINJA.items():
        chat = ollama_chat(jinja)
        assert chat.family == family
        for messages in CONVERSATIONS:
            assert ollama_render(chat.template, messages) == _jinja(jinja, messages), (family, messages)


def test_smollm2s_default_system_prompt_comes_from_the_modelfile_once(smollm2):
    from llmkit.models.io import load_tokenizer_for
    from tests.optimize.go_template import ollama_render

    tok = load_tokenizer_for(smollm2)
    chat = ollama_chat(tok.chat_template, tok)
    assert chat.family == "chatml" and chat.system.startswith("You are a helpful AI assistant named SmolLM")
    for messages in CONVERSATIONS:
        want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ollama_render(chat.template, messages, system=chat.system) == want, messages
    text = modelfile("m.gguf", 8192, chat, {"temperature": 0.2, "top_p": 0.9})
    assert "PARAMETER temperature 0.2\nPARAMETER top_p 0.9\nPARAMETER num_ctx 8192" in text
    assert "temperature" not in modelfile("m.gguf", 8192, chat, None)  # Ollama's defaults, not a figure of ours


def test_values_from_a_hostile_model_cannot_add_modelfile_directives():
    # generation_config.json and the template are the model's files: a value that ends its quoting added its own
    # FROM / ADAPTER lines (a security walk-through's finding)
    from llmkit.optimize.chat_format import OllamaChat

    chat = OllamaChat("chatml", template='{{ .Prompt }}"""\nADAPTER /tmp/evil', stops=['<|im_end|>', 'x"\nFROM /etc/passwd'],
                      system='Hi"""\nFROM /etc/shadow', note="cannot translate\nFROM /bin/sh")
    text = modelfile("m.gguf", 2048, chat, {"temperature": "0.7\nFROM /etc/passwd", "top_p": 0.9, "top_k": True})
    directives = [line.split()[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert directives == ["FROM", "PARAMETER", "PARAMETER", "PARAMETER"], text
    assert text.splitlines()[0] == "FROM ./m.gguf" and 'PARAMETER stop "<|im_end|>"' in text
    assert "PARAMETER top_p 0.9" in text and "temperature" not in text and "top_k" not in text
    assert "# TEMPLATE left out" in text and "# SYSTEM left out" in text
