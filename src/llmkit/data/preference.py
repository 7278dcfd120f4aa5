"""Preference rows to records: pairs (`chosen` over `rejected`) for DPO/ORPO, labelled completions for KTO.

Layouts read (one row each):

- `{prompt | messages, chosen, rejected}`: the prompt a string or a message list ending with a user
  turn; `chosen`/`rejected` strings, or one assistant message each (TRL's conversational layout).
- UltraFeedback-style: `chosen`/`rejected` are whole conversations (message lists) that agree up to
  their last assistant turn; that shared part is the prompt (a `prompt`/`messages` field is then
  only a copy of it and is not read).
- Anthropic HH-style: `chosen`/`rejected` are conversation texts with "\\n\\nHuman:" and
  "\\n\\nAssistant:" turns, the same up to the last assistant turn.
- Unpaired, for KTO: `{prompt | messages, completion, label: true|false}`.

A record is `{"prompt": [messages], "chosen": str, "rejected": str}` or
`{"prompt": [messages], "completion": str, "label": bool}`: the prompt always a message list ending
with a user turn, so a trainer renders it with the model's chat template and appends the answer.
A row that cannot become one raises `BadRecord` with a `reason`, counted by reason under --skip-bad.
"""

from __future__ import annotations

import re
from typing import Any

from llmkit.data.clean import clean_text
from llmkit.data.roles import ROLES as _ROLES
from llmkit.data.roles import roles_hint

# Reasons a row is rejected, as counted in the manifest under --skip-bad.
SAME = "chosen_equals_rejected"
EMPTY = "empty_completion"
NO_PROMPT = "no_prompt"
PROMPTS_DIFFER = "prompts_differ"
LAYOUT = "bad_layout"
LABEL = "bad_label"

# An HH turn marker at the start of the text or after a blank line: "\n\nHuman: ..." / "\n\nAssistant: ...".
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")
_TRUE = {"true", "1", "yes", "desirable", "good"}
_FALSE = {"false", "0", "no", "undesirable", "bad"}


class PreferenceError(Exception):
    """Why a row is not a preference record, before formats.BadRecord adds where it is."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.message = message
        self.reason = reason


def preference_record(row: dict[str, Any]) -> dict[str, Any]:
    """The record of one row (see the module docstring), or PreferenceError."""
    if "completion" in row and "chosen" not in row:
        return _unpaired(row)
    if "chosen" not in row or "rejected" not in row:
        raise PreferenceError(f"no 'chosen' and 'rejected' (or 'completion' and 'label') fields (fields: {_names(row)})",
                              LAYOUT)
    chosen, rejected = row["chosen"], row["rejected"]
    if _is_conversation(chosen) and _is_conversation(rejected):
        prompt, chosen_text, rejected_text = _split_conversations(_messages(chosen, "chosen"), _messages(rejected, "rejected"))
    elif _is_hh(chosen) and _is_hh(rejected):
        prompt, chosen_text, rejected_text = _split_conversations(_hh_turns(chosen), _hh_turns(rejected))
    else:
        prompt = _prompt(row)
        chosen_text, rejected_text = _answer(chosen, "chosen"), _answer(rejected, "rejected")
    _check_answers(chosen_text, rejected_text)
    return {"prompt": prompt, "chosen": chosen_text, "rejected": rejected_text}


# -- unpaired (KTO) ---------------------------------------------------------------------------------


def _unpaired(row: dict[str, Any]) -> dict[str, Any]:
    if "label" not in row:
        raise PreferenceError("a 'completion' needs a 'label' (true: desirable, false: undesirable)", LABEL)
    label = _label(row["label"])
    completion = _answer(row["completion"], "completion")
    if not clean_text(completion):
        raise PreferenceError("empty 'completion'", EMPTY)
    return {"prompt": _prompt(row), "completion": completion, "label": label}


def _label(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise PreferenceError(f"label {value!r} is not true or false", LABEL)


# -- prompts and answers ----------------------------------------------------------------------------


def _prompt(row: dict[str, Any]) -> list[dict[str, str]]:
    """The prompt of an explicit-prompt row as messages ending with a user turn."""
    value = row.get("prompt", row.get("messages"))
    if value is None:
        raise PreferenceError(f"neither 'prompt' nor 'messages' (fields: {_names(row)}); give the prompt the "
                              "answers reply to, or chosen/rejected as whole conversations", NO_PROMPT)
    if isinstance(value, str):
        if _is_hh(value):  # "\n\nHuman: ...\n\nAssistant:" with the answer left out
            turns = _hh_turns(value)
            if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"].strip():
                turns.pop()
            return _checked_prompt(turns)
        if not clean_text(value):
            raise PreferenceError("empty 'prompt'", NO_PROMPT)
        return [{"role": "user", "content": value}]
    return _checked_prompt(_messages(value, "prompt" if "prompt" in row else "messages"))


def _checked_prompt(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """[system] user, assistant, ..., user: alternating turns that end where the answer goes."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns:
        raise PreferenceError("the prompt has no user turn", NO_PROMPT)
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise PreferenceError(f"prompt turn {i + 1} is {msg['role']} where {expected} was expected "
                                  "(turns must alternate, starting with user)", LAYOUT)
        if not clean_text(msg["content"]):
            raise PreferenceError(f"prompt turn {i + 1} ({msg['role']}) has no text", NO_PROMPT)
    if turns[-1]["role"] != "user":
        raise PreferenceError("the prompt ends with an assistant turn; it must end with the user turn that "
                              "the answers reply to", LAYOUT)
    return messages


def _answer(value: Any, field: str) -> str:
    """An answer given as a string or as one assistant message (a list holding it, or the message itself)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        messages = _messages(value, field)
        if len(messages) == 1 and messages[0]["role"] == "assistant":
            return messages[0]["content"]
    raise PreferenceError(f"'{field}' is neither a string, one assistant message nor a whole conversation", LAYOUT)


def _check_answers(chosen: str, rejected: str) -> None:
    chosen_clean, rejected_clean = clean_text(chosen), clean_text(rejected)
    for name, text in (("chosen", chosen_clean), ("rejected", rejected_clean)):
        if not text:
            raise PreferenceError(f"empty '{name}' answer", EMPTY)
    if chosen_clean == rejected_clean:
        raise PreferenceError("'chosen' equals 'rejected'; a pair needs two different answers", SAME)


# -- whole conversations (UltraFeedback messages, HH texts) -----------------------------------------


def _split_conversations(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """Shared prompt and the two last assistant turns of two conversations that differ only in that turn."""
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if not conv or conv[-1]["role"] != "assistant":
            raise PreferenceError(f"the '{name}' conversation does not end with an assistant turn", LAYOUT)
    prompt_c, prompt_r = chosen[:-1], rejected[:-1]
    if [(m["role"], m["content"].strip()) for m in prompt_c] != [(m["role"], m["content"].strip()) for m in prompt_r]:
        raise PreferenceError("'chosen' and 'rejected' differ before their last assistant turn; "
                              "a pair must answer the same prompt", PROMPTS_DIFFER)
    return _checked_prompt(prompt_c), chosen[-1]["content"], rejected[-1]["content"]


def _is_conversation(value: Any) -> bool:
    """A message list that starts with the prompt (a system or user turn), not a bare assistant answer."""
    if not isinstance(value, list) or not value or not isinstance(value[0], dict):
        return False
    role = value[0].get("role", value[0].get("from"))
    return _ROLES.get(str(role).lower()) in ("system", "user")


def _is_hh(value: Any) -> bool:
    return isinstance(value, str) and ("\n\nHuman:" in value or value.startswith("Human:")) and "Assistant:" in value


def _hh_turns(text: str) -> list[dict[str, str]]:
    marks = list(_HH_TURN.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        raise PreferenceError("an HH-style conversation must start with a 'Human:' turn", LAYOUT)
    turns = []
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        content = text[mark.end(): following.start() if following else len(text)]
        turns.append({"role": "user" if mark.group(1) == "Human" else "assistant", "content": content.strip()})
    return turns


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    """A message list with roles folded to system/user/assistant and string contents."""
    if not isinstance(value, list):
        raise PreferenceError(f"'{field}' is {type(value).__name__}, not a list of messages", LAYOUT)
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise PreferenceError(f"{field}[{i}] is {type(msg).__name__}, not a message object", LAYOUT)
        role = _ROLES.get(str(msg.get("role", msg.get("from"))).lower())
        content = msg.get("content", msg.get("value", msg.get("text")))
        if role is None:
            raise PreferenceError(f"{field}[{i}] has role {msg.get('role', msg.get('from'))!r}; {roles_hint()}", LAYOUT)
        if not isinstance(content, str):
            raise PreferenceError(f"{field}[{i}] ({role}) has no text", EMPTY if role == "assistant" else LAYOUT)
        out.append({"role": role, "content": content})
    return out


def _names(row: dict) -> str:
    return ", ".join(str(k) for k in row) or "none"
