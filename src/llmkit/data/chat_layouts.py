"""The conversation layouts `chat` data comes in, read into one list of {role, content} messages: OpenAI `messages`,
ShareGPT `conversations` (from/value), Alpaca and Self-Instruct (instruction/input/output), OpenAssistant prompt trees
(along the best-ranked replies), and single exchanges (prompt/response, question/answer, ...)."""

from __future__ import annotations

from typing import Any

from llmkit.data.record_fields import BadRecord, fields_of, find_field
from llmkit.data.roles import ROLES as _ROLES
from llmkit.data.roles import roles_hint


def chat_messages(row: dict, where: str, field: str | None = None) -> list[list[dict]]:
    """The conversations in one row (usually one; Self-Instruct tasks hold one per instance)."""
    if field is not None:
        key = find_field(row, field)
        if key is None:
            raise BadRecord(f"{where}: no field '{field}' (fields: {fields_of(row)}); pass --text-field")
        return [_validate(_message_list(row[key], where, key), where)]
    for name in ("messages", "conversations", "conversation"):
        key = find_field(row, name)
        if key is not None:
            return [_validate(_message_list(row[key], where, key), where)]
    if isinstance(row.get("prompt"), dict):
        return [_validate(oasst_messages(row["prompt"]), where)]
    if isinstance(row.get("instances"), list) and "instruction" in row:
        convs = [_alpaca(row, inst, where) for inst in row["instances"] if isinstance(inst, dict)]
        if not convs:
            raise BadRecord(f"{where}: 'instances' holds no {{input, output}} objects")
        return convs
    if "instruction" in row:
        return [_alpaca(row, row, where)]
    pair = next(((q, a) for q, a in _PAIRS if find_field(row, q) is not None and find_field(row, a) is not None), None)
    if pair is not None:
        return [_validate(_pair(row, *pair), where)]
    raise BadRecord(
        f"{where}: not a conversation (fields: {fields_of(row)}); expected messages, conversations, "
        f"instruction/input/output, {', '.join('/'.join(p) for p in _PAIRS)} or an OpenAssistant prompt tree"
    )


# One question and its answer, as single-turn exports name them (a field name's case does not matter).
_PAIRS = (("prompt", "response"), ("prompt", "completion"), ("question", "answer"), ("query", "response"),
          ("input", "output"))


def _pair(row: dict, question: str, answer: str) -> list[dict]:
    messages = [{"role": "user", "content": row[find_field(row, question)]},
                {"role": "assistant", "content": row[find_field(row, answer)]}]
    system = find_field(row, "system")
    if system is not None and isinstance(row[system], str) and row[system].strip():
        messages.insert(0, {"role": "system", "content": row[system]})
    return messages


def _message_list(value: Any, where: str, key: str) -> list[dict]:
    if not isinstance(value, list):
        raise BadRecord(f"{where}: field '{key}' is {type(value).__name__}, not a list of messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise BadRecord(f"{where}: {key}[{i}] is {type(msg).__name__}, not a message object")
        role = msg.get("role", msg.get("from"))
        content = msg.get("content", msg.get("value", msg.get("text")))
        out.append({"role": role, "content": content})
    return out


def _alpaca(row: dict, inst: dict, where: str) -> list[dict]:
    instruction = row.get("instruction")
    extra = inst.get("input", inst.get("context"))  # Dolly calls the input `context`
    output = inst.get("output", inst.get("response"))
    if not isinstance(instruction, str) or not instruction.strip():
        raise BadRecord(f"{where}: empty or missing 'instruction'")
    if not isinstance(output, str) or not output.strip():
        raise BadRecord(f"{where}: empty or missing 'output' (fields: {fields_of(inst)})")
    prompt = instruction + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages.insert(0, {"role": "system", "content": row["system"]})
    return messages


def oasst_messages(root: dict) -> list[dict]:
    """One linear conversation from an OpenAssistant message tree.

    At each level the best-ranked reply wins (rank 0 is best; unranked replies lose to ranked ones,
    and among equals the first wins); deleted replies never do. A path that ends on an unanswered
    user turn is cut back to the last assistant turn, since a prompt without an answer teaches nothing.
    """
    messages: list[dict] = []
    node: dict | None = root
    while node is not None:
        messages.append({"role": node.get("role"), "content": node.get("text", node.get("content"))})
        replies = [r for r in node.get("replies") or [] if isinstance(r, dict) and not r.get("deleted")]
        node = _best_reply(replies)
    while messages and _ROLES.get(str(messages[-1]["role"]).lower()) == "user":
        messages.pop()
    return messages


def _best_reply(replies: list[dict]) -> dict | None:
    ranked = [r for r in replies if isinstance(r.get("rank"), int | float) and not isinstance(r.get("rank"), bool)]
    if ranked:
        return min(ranked, key=lambda r: r["rank"])  # min keeps the first of equal ranks
    return replies[0] if replies else None


def _validate(messages: list[dict], where: str) -> list[dict]:
    """Fold role names, then insist on [system] user, assistant, user, ..., assistant."""
    out = []
    for i, msg in enumerate(messages):
        role = _ROLES.get(str(msg["role"]).lower()) if msg["role"] is not None else None
        if role is None:
            raise BadRecord(f"{where}: message {i + 1} has role {msg['role']!r}; {roles_hint()}")
        content = msg["content"]
        if not isinstance(content, str) or not content.strip():
            raise BadRecord(f"{where}: message {i + 1} ({role}) has no text")
        out.append({"role": role, "content": content})
    turns = out[1:] if out and out[0]["role"] == "system" else out
    if not turns:
        raise BadRecord(f"{where}: conversation has no user or assistant turns")
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            n = i + 1 + (len(out) - len(turns))
            raise BadRecord(f"{where}: message {n} is {msg['role']} where {expected} was expected (turns must alternate)")
    if turns[-1]["role"] != "assistant":
        raise BadRecord(f"{where}: conversation ends with a user turn; it must end with an assistant reply")
    return out
