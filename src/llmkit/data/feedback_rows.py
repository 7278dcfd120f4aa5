"""Reading the server's feedback rows, shared by `from-feedback`'s chat and preference paths.

Registry `feedback` rows come in two kinds: feedback (extra.kind "feedback": a rating, a correction)
and request logs (extra.kind "request", with --log-requests). Per response id the latest feedback
wins; the prompt and the answer are taken from the row or, when the server did not remember the
response id, from its request log or earlier feedback on it. Why a response was left out is counted
by reason, under the names below.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from llmkit.data.formats import BadRecord

# Why a response was left out, in the order the summary lists them.
SKIP_REASONS = {
    "superseded": "older feedback on a response rated again (the latest wins)",
    "before_since": "given before --since",
    "below_min_rating": "rated below --min-rating without a correction",
    "unrated": "neither rated nor corrected",
    "corrections_excluded": "corrections left out by --no-include-corrections",
    "not_stored": "prompt or response not stored (no request log with that response id)",
    "malformed": "prompt is not a valid conversation, or the answer is empty",
    # Preference only: neither can make a pair (chosen and rejected must differ).
    "correction_unchanged": "corrections identical to the answer they correct",
    # Both: one answer to one prompt rated up in one response and down in another is neither approved (chat) nor a
    # side of a pair (preference).
    "rated_both_ways": "ratings of one answer to one prompt both up and down",
}


@dataclass
class SeenFeedback:
    """Feedback rows read once: the latest per response id, the request logs and earlier feedback to fill
    in what a row lacks, and what the reading already skipped."""
    latest: dict[str, dict]
    logs: dict[str, dict]
    history: dict[str, list[dict]]
    feedback_rows: int
    request_logs: int
    skipped: Counter[str]

    def stored(self, key: str, field: str) -> str | None:
        """A text of the response: from its latest row, else its request log, else its earlier feedback
        (the server may not have remembered the response id)."""
        return _first(self.latest[key], [self.logs.get(key, {}), *reversed(self.history[key])], field)

    def endpoint(self, key: str) -> str | None:
        return _endpoint(self.latest[key], self.logs.get(key))

    def model(self, key: str) -> str:
        """The model that wrote the response: the registry ref the server recorded (`model_ref`, e.g.
        'chat-dpo:v2'), else the name it served it under. A served name can be an alias (`serve prod`) or
        `NAME=MODEL`'s NAME, which no registry record has, and an alias moves on after the answer was written."""
        for candidate in (self.latest[key], self.logs.get(key) or {}):
            ref = (candidate.get("extra") or {}).get("model_ref")
            if isinstance(ref, str) and ref:
                return ref
        return self.latest[key]["model"]

    def counts(self) -> dict[str, int]:
        return {"feedback_rows": self.feedback_rows, "request_logs": self.request_logs}


def read_feedback(rows: list[dict[str, Any]], since: float | None = None) -> SeenFeedback:
    """Registry rows (`list_feedback`, oldest first) sorted into request logs and the latest feedback."""
    logs: dict[str, dict] = {}
    feedback: list[dict] = []
    for row in rows:  # list_feedback returns them oldest first
        if (row.get("extra") or {}).get("kind") == "request":
            if row.get("response_id"):
                logs[row["response_id"]] = row
        else:
            feedback.append(row)
    skipped: Counter[str] = Counter()
    latest: dict[str, dict] = {}
    history: dict[str, list[dict]] = {}
    for n, row in enumerate(feedback):
        key = row.get("response_id") or f"#{n}"  # without an id a row cannot be matched to another
        choice = (row.get("extra") or {}).get("choice")
        if row.get("response_id") and isinstance(choice, int) and choice > 0:  # each choice of an n > 1 response
            key = f"{key}#{choice}"
        history.setdefault(key, []).append(row)
        if since is not None and row["created_at"] < since:
            skipped["before_since"] += 1
            continue
        if key in latest:
            skipped["superseded"] += 1
        latest[key] = row
    return SeenFeedback(latest, logs, history, len(feedback), len(rows) - len(feedback), skipped)


def counted(skipped: Counter[str]) -> dict[str, int]:
    """The skip counts in SKIP_REASONS' order, zeros left out."""
    return {reason: skipped[reason] for reason in SKIP_REASONS if skipped[reason]}


def describe_skipped(skipped: dict[str, int]) -> str:
    return "; ".join(f"{n} {SKIP_REASONS[reason]}" for reason, n in skipped.items()) or "none"


def _first(row: dict, fallbacks: list[dict], field: str) -> str | None:
    for candidate in (row, *fallbacks):
        if candidate.get(field) is not None:
            return candidate[field]
    return None


def _endpoint(row: dict, log: dict | None) -> str | None:
    for candidate in (row, log or {}):
        endpoint = (candidate.get("extra") or {}).get("endpoint")
        if endpoint in ("chat", "completion"):
            return endpoint
    rid = row.get("response_id") or ""
    return "chat" if rid.startswith("chatcmpl-") else "completion" if rid.startswith("cmpl-") else None


def prompt_messages(prompt: str, endpoint: str | None, where: str) -> list[dict[str, Any]]:
    """The conversation before the answer: a chat prompt is the JSON messages list the client sent."""
    if endpoint == "completion":
        return [{"role": "user", "content": prompt}]
    try:
        value = json.loads(prompt)
    except json.JSONDecodeError:
        if endpoint == "chat":
            raise BadRecord(f"{where}: chat prompt is not JSON") from None
        return [{"role": "user", "content": prompt}]  # unknown endpoint, plain text: a completion
    if isinstance(value, dict) and isinstance(value.get("messages"), list):
        value = value["messages"]
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        if endpoint == "chat":
            raise BadRecord(f"{where}: chat prompt is not a list of messages")
        return [{"role": "user", "content": prompt}]
    out = []
    for m in value:
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: only text parts are served
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        role = "system" if m.get("role") == "developer" else m.get("role")  # OpenAI's newer name for system
        out.append({"role": role, "content": content})
    return out
