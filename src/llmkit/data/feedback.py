"""`llmkit data from-feedback`: rated and corrected responses from the server into a chat dataset.

The server stores one registry `feedback` row per rating or correction (extra.kind "feedback") and,
with --log-requests, one per answered request (extra.kind "request"). Per response id the latest
feedback wins; a correction becomes the assistant reply (whatever the rating: correcting a bad
answer is the point), an approved response (rating >= min_rating) is kept as it was, and everything
else is skipped and counted by reason. The conversations then go through the ordinary `prepare`
(cleaning, PII, dedupe, splits, tokenizer), so a feedback dataset is like any other chat dataset.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmkit.config import DataConfig, FeedbackDataConfig, SplitConfig
from llmkit.data.dataset import DatasetVersion
from llmkit.data.formats import BadRecord, chat_messages
from llmkit.data.pipeline import prepare
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace

# Why a response was left out, in the order the summary lists them.
SKIP_REASONS = {
    "superseded": "older feedback on a response rated again (the latest wins)",
    "before_since": "given before --since",
    "below_min_rating": "rated below --min-rating without a correction",
    "unrated": "neither rated nor corrected",
    "corrections_excluded": "corrections left out by --no-include-corrections",
    "not_stored": "prompt or response not stored (no request log with that response id)",
    "malformed": "prompt is not a valid conversation",
}
HOW_TO_GET_SOME = ("rate or correct answers in the web UI of 'llmkit serve', or POST /v1/feedback with "
                   "{response_id, rating: 1 | -1, correction}")


def dataset_from_feedback(cfg: FeedbackDataConfig, ws: Workspace | None = None,
                          registry: Registry | None = None, progress=None) -> DatasetVersion:
    """Register a chat dataset version built from feedback; the manifest's "feedback" key has the counts."""
    ws = ws or Workspace.open()
    registry = registry or Registry.for_workspace(ws.root)
    if not cfg.name:
        raise UserError("from-feedback.name is not set: pass --name NAME for the dataset, e.g. --name feedback")
    since = _since(cfg.since)
    rows = registry.list_feedback(cfg.model)
    conversations, summary = select(rows, cfg.min_rating, cfg.include_corrections, since)
    if not conversations:
        raise UserError(_nothing_usable(registry, cfg, summary))

    tokenizer = cfg.tokenizer or _model_tokenizer(cfg.model, registry)
    with tempfile.TemporaryDirectory(prefix="llmkit-feedback-") as tmp:
        # A fixed file name: prepare hashes names and bytes, so the same feedback finds its version again.
        file = Path(tmp) / "feedback.jsonl"
        with open(file, "w", encoding="utf-8") as fh:
            for conv in conversations:
                fh.write(json.dumps({"messages": conv["messages"]}, ensure_ascii=False) + "\n")
        data = DataConfig(inputs=[str(file)], name=cfg.name, task="chat", tokenizer=tokenizer,
                          splits=SplitConfig(val=cfg.val, test=0.0))
        try:
            ds = prepare(data, ws, registry, progress)
        except UserError:
            # Splits hash each record's content, so a handful of conversations can all land in val
            # (prepare then refuses: train is empty). Keep them all in train instead; if the error
            # was something else, the second attempt raises it again.
            if cfg.val == 0:
                raise
            data.splits = SplitConfig(val=0.0, test=0.0)
            ds = prepare(data, ws, registry, progress)

    parents = _link_models(registry, ds.id, sorted({c["model"] for c in conversations}))
    summary["models"] = parents
    registry.update_metrics(ds.id, {"feedback": {"used": summary["used"], "skipped": summary["skipped"]}})
    ds.manifest["feedback"] = summary
    return ds


def select(rows: list[dict[str, Any]], min_rating: int = 1, include_corrections: bool = True,
           since: float | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Registry feedback rows -> conversations ({messages, model, response_id, how}) and the counts."""
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
        history.setdefault(key, []).append(row)
        if since is not None and row["created_at"] < since:
            skipped["before_since"] += 1
            continue
        if key in latest:
            skipped["superseded"] += 1
        latest[key] = row

    used: Counter[str] = Counter()
    conversations: list[dict[str, Any]] = []
    bad_examples: list[str] = []
    for key, row in latest.items():
        correction = row.get("correction") if include_corrections else None
        correction = correction if correction and correction.strip() else None
        rating = row.get("rating")
        if correction is not None:
            how, answer = "corrected", correction
        elif rating is not None and rating >= min_rating:
            how, answer = "approved", None
        else:
            reason = ("corrections_excluded" if row.get("correction") and not include_corrections
                      else "unrated" if rating is None else "below_min_rating")
            skipped[reason] += 1
            continue
        # The server may not have remembered the response id: fill the text in from its request
        # log, or from earlier feedback on the same response.
        fallbacks = [logs.get(key, {}), *reversed(history[key])]
        prompt = _first(row, fallbacks, "prompt")
        answer = answer if answer is not None else _first(row, fallbacks, "response")
        if prompt is None or answer is None:
            skipped["not_stored"] += 1
            continue
        where = f"feedback {row['id']} ({row.get('response_id') or 'no response id'})"
        try:
            messages = _prompt_messages(prompt, _endpoint(row, logs.get(key)), where)
            messages = chat_messages({"messages": [*messages, {"role": "assistant", "content": answer}]}, where)[0]
        except BadRecord as err:
            skipped["malformed"] += 1
            if len(bad_examples) < 3:
                bad_examples.append(str(err))
            continue
        used[how] += 1
        conversations.append({"messages": messages, "model": row["model"], "response_id": row.get("response_id"),
                              "how": how})
    summary = {
        "feedback_rows": len(feedback), "request_logs": len(rows) - len(feedback),
        "used": {"corrected": used["corrected"], "approved": used["approved"]},
        "skipped": {reason: skipped[reason] for reason in SKIP_REASONS if skipped[reason]},
        "bad_examples": bad_examples,
    }
    return conversations, summary


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


def _prompt_messages(prompt: str, endpoint: str | None, where: str) -> list[dict[str, Any]]:
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


def _since(value: str | None) -> float | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"from-feedback.since = '{value}': not an ISO date or time; use e.g. 2025-01-31 or "
                        "2025-01-31T14:00:00+01:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # registry times are shown in UTC
    return moment.timestamp()


def _model_tokenizer(model: str | None, registry: Registry) -> str:
    """The model's own tokenizer, so token counts match what sft will see; char when it is not here."""
    if not model:
        return "char"
    from llmkit.models.io import resolve_model

    try:
        path = resolve_model(model, registry).path
    except UserError:
        return "char"
    return str(path) if Path(path).is_dir() else "char"


def _link_models(registry: Registry, dataset_id: str, models: list[str]) -> list[str]:
    """Lineage dataset <- model ("feedback") for each registered model the feedback was about."""
    parents = [(name, rec.id) for name in models if (rec := registry.find(name, "model")) is not None]
    for _, parent_id in parents:  # after registration: prepare registers the dataset without parents
        registry.link(dataset_id, parent_id, "feedback")
    return [name for name, _ in parents]


def _nothing_usable(registry: Registry, cfg: FeedbackDataConfig, summary: dict[str, Any]) -> str:
    scope = f" on model '{cfg.model}'" if cfg.model else ""
    if summary["feedback_rows"] == 0:
        known = ""
        if cfg.model:
            names = sorted({r["model"] for r in registry.list_feedback() if (r.get("extra") or {}).get("kind") != "request"})
            known = f" (models with feedback: {', '.join(names[:10])})" if names else ""
        return f"no feedback{scope} in the registry{known}; {HOW_TO_GET_SOME}, then run this again"
    detail = describe_skipped(summary["skipped"])
    example = f" (first: {summary['bad_examples'][0]})" if summary["bad_examples"] else ""
    return (f"no usable feedback{scope}: {summary['feedback_rows']} feedback rows seen, none approved "
            f"(rating >= {cfg.min_rating}) or corrected; skipped: {detail}{example}; {HOW_TO_GET_SOME}")
