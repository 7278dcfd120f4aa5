"""A model's chat template as other runtimes need it: the template text (transformers 5 keeps it in
`chat_template.jinja`, older folders in `tokenizer_config.json`), the token that ends an assistant turn,
and the same template in Ollama's Go syntax for the families that can be translated.

A model that chats well in training and talks nonsense in Ollama is the most reported failure of
fine-tuning tools; it comes from exactly these three things going missing on export.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

PROBE_USER, PROBE_REPLY = "Hi there", "ZQXJ reply"  # strings no template contains


def end_of_turn(tokenizer) -> str | None:
    """The special token the template writes right after an assistant's reply (None: none found)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROBE_USER},
                                          {"role": "assistant", "content": PROBE_REPLY}], tokenize=False)
    after = text[text.rfind(PROBE_REPLY) + len(PROBE_REPLY):] if PROBE_REPLY in text else ""
    specials = sorted(set(tokenizer.all_special_tokens) | set(getattr(tokenizer, "added_tokens_encoder", {})), key=len,
                      reverse=True)
    after = after.lstrip(" ")
    return next((s for s in specials if s and after.startswith(s)), None)


@dataclass
class OllamaChat:
    """What an Ollama Modelfile needs: TEMPLATE in Go syntax, stop strings, a default SYSTEM message."""

    family: str | None
    template: str = "{{ .Prompt }}"
    stops: list[str] = field(default_factory=list)
    system: str | None = None
    note: str | None = None  # why the template could not be translated


# Ollama hands a template that reads `.Messages` every message, system ones included, and also joins the system
# messages into `.System` (template/template.go: Execute, collate); the Modelfile's SYSTEM arrives as a system
# message. So these loop over `.Messages` alone (printing `.System` as well rendered the system prompt twice,
# which Ollama's own ChatML and Llama 3 templates were changed to stop doing), and a family that folds the system
# prompt into the first user turn (Gemma, Mistral) keeps it in a variable until that turn.
CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n")
LLMKIT = ("{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n")
LLAMA3 = ("{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
          "<|start_header_id|>assistant<|end_header_id|>\n\n")
GEMMA = ("{{- $system := \"\" }}{{- range .Messages }}{{ if eq .Role \"system\" }}{{ $system = .Content }}{{ else }}"
         "<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}{{ .Role }}{{ end }}\n"
         "{{ if $system }}{{ $system }}\n\n{{ $system = \"\" }}{{ end }}{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}"
         "<start_of_turn>model\n")
MISTRAL = ("{{- $system := \"\" }}{{- range .Messages }}{{ if eq .Role \"system\" }}{{ $system = .Content }}"
           "{{ else if eq .Role \"user\" }}[INST] {{ if $system }}{{ $system }}\n\n{{ $system = \"\" }}{{ end }}"
           "{{ .Content }} [/INST]{{ else }}{{ .Content }}</s>{{ end }}{{ end }}")

# (marker in the Jinja template, family, Go template, stop strings)
FAMILIES = [
    ("<|im_start|>", "chatml", CHATML, ["<|im_end|>", "<|im_start|>"]),
    ("<|start_header_id|>", "llama3", LLAMA3, ["<|eot_id|>", "<|start_header_id|>"]),
    ("<start_of_turn>", "gemma", GEMMA, ["<end_of_turn>", "<start_of_turn>"]),
    ("<|assistant|>", "llmkit", LLMKIT, ["<|end|>", "<|user|>"]),
    ("[INST]", "mistral", MISTRAL, ["[INST]", "</s>"]),
]


def ollama_chat(template: str | None, tokenizer=None) -> OllamaChat:
    """The Modelfile's view of a chat template, or a plain-prompt one with a note saying why."""
    if not template:
        return OllamaChat(None, note="the model has no chat template: Ollama sends the prompt as it is")
    for marker, family, go, stops in FAMILIES:
        if marker in template:
            return OllamaChat(family, go, stops, _default_system(family, tokenizer))
    return OllamaChat(None, note="llmkit cannot translate this chat template to Ollama's Go syntax (known: "
                                 + ", ".join(f for _, f, _, _ in FAMILIES) + "); the GGUF carries the original for "
                                 "llama.cpp, write TEMPLATE by hand for Ollama")


def _default_system(family: str, tokenizer) -> str | None:
    """A system message the template adds when the conversation has none (SmolLM2's does)."""
    if tokenizer is None or family != "chatml":
        return None
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROBE_USER}], tokenize=False)
    found = re.match(r"\s*<\|im_start\|>system\n(.*?)<\|im_end\|>", text, re.S)
    return found.group(1) if found else None


def modelfile(gguf_name: str, context: int, chat: OllamaChat, sampling: dict | None = None) -> str:
    """An Ollama Modelfile: FROM the GGUF, its chat template in Go syntax, the stops, a default system, and the
    sampling the model's generation_config.json asks for (`sampling`; it said temperature 0.8 whatever the model)."""
    # Every value comes from the model's own files, which may be hostile: a value that could end its quoting (a
    # triple quote in a template or system prompt, a quote or line break in a stop, text in a number's place) would let
    # them add directives of their own (another FROM or ADAPTER), so it is left out with a comment saying so.
    lines = [f"FROM ./{gguf_name}"]
    if chat.note:
        lines.append("# " + " ".join(chat.note.split()))
    if '"""' in chat.template:
        lines.append('# TEMPLATE left out: the chat template holds """, which a Modelfile cannot quote')
    else:
        lines.append(f'TEMPLATE """{chat.template}"""')
    if chat.system and '"""' in chat.system:
        lines.append('# SYSTEM left out: the default system prompt holds """, which a Modelfile cannot quote')
    elif chat.system:
        lines.append(f'SYSTEM """{chat.system}"""')
    for stop in chat.stops or ["<|endoftext|>"]:
        if any(c in stop for c in '"\\\n\r'):
            lines.append(f"# stop {json.dumps(stop)} left out: a quote, backslash or line break in it")
        else:
            lines.append(f'PARAMETER stop "{stop}"')
    if (sampling or {}).get("do_sample", True):  # greedy models leave Ollama's own defaults alone
        for key in ("temperature", "top_p", "top_k"):
            value = (sampling or {}).get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value:
                lines.append(f"PARAMETER {key} {value}")
    lines.append(f"PARAMETER num_ctx {int(context)}")
    return "\n".join(lines) + "\n"
