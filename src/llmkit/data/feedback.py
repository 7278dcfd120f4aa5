"""`llmkit data from-feedback`: rated and corrected responses from the server into a chat dataset.

The server stores one registry `feedback` row per rating or correction (extra.kind "feedback") and,
with --log-requests, one per answered request (extra.kind "request"). Per response id the latest
feedback wins; a correction becomes the assistant reply (whatever the rating: correcting a bad
answer is the point), an approved response (rating >= min_rating) is kept as it was unless another
response with the same answer to the same prompt was rated below min_rating (contested: skipped, as
in the preference path), and everything else is skipped and counted by reason. The conversations
then go through the ordinary `prepare` (cleaning, PII, dedupe, splits, tokenizer), so a feedback
dataset is like any other chat dataset.
With task "preference" the same rows become preference pairs and KTO records instead
(`feedback_preference.py`), through the same `prepare`. Reading the rows: `feedback_rows.py`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llmkit.config import DataConfig, FeedbackDataConfig, SplitConfig
from llmkit.data.chat_layouts import chat_messages
from llmkit.data.dataset import DatasetVersion
from llmkit.data.feedback_preference import comparable, prompt_key, select_preference
from llmkit.data.feedback_rows import SeenFeedback, counted, describe_skipped, prompt_messages, read_feedback
from llmkit.data.formats import BadRecord
from llmkit.data.pipeline import prepare
from llmkit.errors import UserError
from llmkit.registry import Registry
from llmkit.workspace import Workspace

HOW_TO_GET_SOME = ("rate or correct answers in the web UI of 'llmkit serve', or POST /v1/feedback with "
                   "{response_id, rating: 1 | -1, correction}")


def _prepared(data: DataConfig, val: float, ws, registry, progress):
    try:
        return prepare(data, ws, registry, progress)
    except UserError:
        # Splits hash each record's content (a preference record's prompt), so a handful of records
        # can all land in val (prepare then refuses: train is empty). Keep them all in train instead;
        # if the error was something else, the second attempt raises it again.
        if val == 0:
            raise
        data.splits = SplitConfig(val=0.0, test=0.0)
        return prepare(data, ws, registry, progress)


def dataset_from_feedback(cfg: FeedbackDataConfig, ws: Workspace | None = None,
                          registry: Registry | None = None, progress=None) -> DatasetVersion:
    """Register a chat (or preference) dataset version built from feedback; the manifest's "feedback" key
    has the counts."""
    cfg = FeedbackDataConfig.given(cfg, "llmkit.data.feedback.dataset_from_feedback")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    if not cfg.name:
        raise UserError("from-feedback.name is not set: pass --name NAME for the dataset, e.g. --name feedback")
    since = _since(cfg.since)
    rows = registry.list_feedback(cfg.model)
    if cfg.task == "preference":
        picks, summary = select_preference(rows, cfg.min_rating, cfg.include_corrections, since)
        records = [p["record"] for p in picks]
        models = {model for p in picks for model in p["models"]}
    else:
        conversations, summary = select(rows, cfg.min_rating, cfg.include_corrections, since)
        records = [{"messages": c["messages"]} for c in conversations]
        models = {c["model"] for c in conversations}
    if not records:
        raise UserError(_nothing_usable(registry, cfg, summary))

    tokenizer = cfg.tokenizer or _model_tokenizer(cfg.model, registry)
    if cfg.tokenizer:  # before the export is written, and under this command's own key (it said data.tokenizer)
        from llmkit.data.tokenizer import check_spec

        try:
            check_spec(cfg.tokenizer)
        except UserError as err:
            raise UserError(str(err).replace("data.tokenizer", "from-feedback.tokenizer", 1)) from None
    # Kept in the workspace, named by its content: the dataset's records name their source file and line (a temporary
    # file was gone by the time `data show` pointed at it), and the same feedback gives the same name, which prepare
    # hashes with the bytes, so it finds its version again.
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    exports = ws.folder("datasets", "feedback-exports")
    exports.mkdir(parents=True, exist_ok=True)
    file = exports / f"{cfg.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.jsonl"
    made = not file.exists()  # a failure below removes an export this call made (users' prompts and answers)
    if made:
        partial = file.with_name(f".{file.name}.tmp")
        partial.write_text(text, encoding="utf-8")
        partial.replace(file)  # never a half-written export under its final name
    # Preference records of one prompt differ only in their short answers, and near-duplicate
    # detection (over prompt and answers together) would keep one answer per long prompt: exact only.
    data = DataConfig(inputs=[str(file)], name=cfg.name, task=cfg.task, tokenizer=tokenizer,
                      splits=SplitConfig(val=cfg.val, test=0.0),
                      dedupe="exact" if cfg.task == "preference" else "near")
    try:
        ds = _prepared(data, cfg.val, ws, registry, progress)
    except BaseException:
        if made:
            file.unlink(missing_ok=True)
        raise

    parents = _link_models(registry, ds.id, sorted(models))
    summary["models"] = parents
    registry.update_metrics(ds.id, {"feedback": {"used": summary["used"], "skipped": summary["skipped"]}})
    ds.manifest["feedback"] = summary
    return ds


def select(rows: list[dict[str, Any]], min_rating: int = 1, include_corrections: bool = True,
           since: float | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Registry feedback rows -> conversations ({messages, model, response_id, how}) and the counts."""
    seen = read_feedback(rows, since)
    skipped = seen.skipped
    used: Counter[str] = Counter()
    conversations: list[dict[str, Any]] = []
    bad_examples: list[str] = []
    rated_down = _rated_down(seen, min_rating)
    for key, row in seen.latest.items():
        correction = row.get("correction") if include_corrections else None
        correction = correction if correction and correction.strip() else None
        rating = row.get("rating")
        if correction is not None:
            how, answer = "corrected", correction
        elif rating is not None and rating >= min_rating:
            if _answer_key(seen, key) in rated_down:  # one answer to one prompt, approved once and rated down once
                skipped["rated_both_ways"] += 1
                continue
            how, answer = "approved", None
        else:
            reason = ("corrections_excluded" if row.get("correction") and not include_corrections
                      else "unrated" if rating is None else "below_min_rating")
            skipped[reason] += 1
            continue
        prompt = seen.stored(key, "prompt")
        answer = answer if answer is not None else seen.stored(key, "response")
        if prompt is None or answer is None:
            skipped["not_stored"] += 1
            continue
        where = f"feedback {row['id']} ({row.get('response_id') or 'no response id'})"
        try:
            messages = prompt_messages(prompt, seen.endpoint(key), where)
            messages = chat_messages({"messages": [*messages, {"role": "assistant", "content": answer}]}, where)[0]
        except BadRecord as err:
            skipped["malformed"] += 1
            if len(bad_examples) < 3:
                bad_examples.append(str(err))
            continue
        used[how] += 1
        conversations.append({"messages": messages, "model": seen.model(key), "response_id": row.get("response_id"),
                              "how": how})
    summary = {**seen.counts(), "used": {"corrected": used["corrected"], "approved": used["approved"]},
               "skipped": counted(skipped), "bad_examples": bad_examples}
    return conversations, summary


def _answer_key(seen: SeenFeedback, key: str) -> tuple[str, str] | None:
    """(prompt, answer) of a response as `--task preference` compares them (whitespace aside); None when unknown."""
    prompt, answer = seen.stored(key, "prompt"), seen.stored(key, "response")
    if prompt is None or answer is None:
        return None
    try:
        messages = prompt_messages(prompt, seen.endpoint(key), "")
    except BadRecord:
        return None
    if not all(isinstance(m.get("content"), str) for m in messages):
        return None
    return prompt_key(messages), comparable(answer)


def _rated_down(seen: SeenFeedback, min_rating: int) -> set[tuple[str, str]]:
    """The answers some response rated below min_rating (corrected or not): the same answer to the same prompt,
    approved in another response (greedy decoding gives every user the same one), is contested, not approved."""
    down = (_answer_key(seen, key) for key, row in seen.latest.items()
            if row.get("rating") is not None and row["rating"] < min_rating)
    return {k for k in down if k is not None}


def _since(value: str | None, key: str = "from-feedback.since") -> float | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"{key} = '{value}': not an ISO date or time; use e.g. 2025-01-31 or "
                        "2025-01-31T14:00:00+01:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # registry times are shown in UTC
    return moment.timestamp()


def forget_feedback(registry: Registry, *, before: str | None = None, model: str | None = None,
                    response_ids: list[str] | None = None, count_only: bool = False) -> int:
    """Remove the stored feedback and request logs (prompts, answers, corrections) matching every filter given:
    older than `before` (an ISO date or time, UTC unless it says), of served model `model`, of these responses.
    A deletion request or a retention rule was hand-written SQL. Returns how many rows went (or would)."""
    if not (before or model or response_ids):
        raise UserError("say what to forget: --before DATE, --model NAME or --response-id ID (they combine)")
    return registry.remove_feedback(model=model, before=_since(before, "--before"), response_ids=response_ids,
                                    count_only=count_only)


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
            known = f" (models with feedback: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})" if names else ""
        return f"no feedback{scope} in the registry{known}; {HOW_TO_GET_SOME}, then run this again"
    detail = describe_skipped(summary["skipped"])
    example = f" (first: {summary['bad_examples'][0]})" if summary["bad_examples"] else ""
    wanted = ("none rated or corrected into a pair or a rated answer" if cfg.task == "preference"
              else f"none approved (rating >= {cfg.min_rating}) or corrected")
    return (f"no usable feedback{scope}: {summary['feedback_rows']} feedback rows seen, {wanted}; "
            f"skipped: {detail}{example}; {HOW_TO_GET_SOME}")
