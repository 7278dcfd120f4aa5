"""`llmkit data from-feedback --task preference`: served feedback into preference pairs and KTO records.

Read like the chat path (`feedback_rows.read_feedback`: per response id the latest feedback wins, the text
filled in from the request log or earlier feedback), then, per response:

- a correction (unless --no-include-corrections) makes a pair: the correction *chosen* over the
  answer it corrects, whatever the rating; a correction that equals the answer is skipped;
- a rated answer waits for a partner: a thumbs-up (rating >= min_rating) and a thumbs-down answer
  to the same prompt (the same messages, whitespace aside) make a pair, matched oldest first, one
  answer in one pair only. One answer text rated both ways for one prompt says nothing about which
  is better: all its ratings are skipped. What finds no partner becomes a KTO record
  `{prompt, completion, label}` with label = rated up.

Records have the layout of `preference.py` (`data prepare --task preference`), which checks them
here already, so that a bad row is skipped and counted instead of stopping `prepare`.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from llmkit.data.clean import clean_text
from llmkit.data.feedback_rows import counted, prompt_messages, read_feedback
from llmkit.data.formats import BadRecord
from llmkit.data.preference import PreferenceError, preference_record


def select_preference(rows: list[dict[str, Any]], min_rating: int = 1, include_corrections: bool = True,
                      since: float | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Registry feedback rows -> picks ({record, models, how}) and the counts (summary as `feedback.select`'s)."""
    seen = read_feedback(rows, since)
    skipped = seen.skipped
    picks: list[dict[str, Any]] = []
    bad_examples: list[str] = []
    # prompt key -> the rated answers to it, in the order their responses were first rated
    rated: dict[str, list[dict[str, Any]]] = {}

    def bad(err: Exception) -> None:
        skipped["malformed"] += 1
        if len(bad_examples) < 3:
            bad_examples.append(str(err))

    for key, row in seen.latest.items():
        correction = row.get("correction") if include_corrections else None
        correction = correction if correction and correction.strip() else None
        rating = row.get("rating")
        if correction is None and rating is None:
            skipped["corrections_excluded" if row.get("correction") else "unrated"] += 1
            continue
        prompt, answer = seen.stored(key, "prompt"), seen.stored(key, "response")
        if prompt is None or answer is None:  # a correction needs the answer it corrects as well
            skipped["not_stored"] += 1
            continue
        where = f"feedback {row['id']} ({row.get('response_id') or 'no response id'})"
        if correction is not None and _same(correction, answer):
            skipped["correction_unchanged"] += 1
            continue
        try:
            messages = prompt_messages(prompt, seen.endpoint(key), where)
            if correction is not None:
                record = preference_record({"prompt": messages, "chosen": correction, "rejected": answer})
            else:
                record = preference_record({"prompt": messages, "completion": answer, "label": rating >= min_rating})
        except PreferenceError as err:  # the prompt is no conversation, or the answer is empty
            bad(BadRecord(f"{where}: {err.message}"))
            continue
        except BadRecord as err:
            bad(err)
            continue
        if correction is not None:
            picks.append({"record": record, "models": [seen.model(key)], "how": "correction"})
        else:
            rated.setdefault(prompt_key(record["prompt"]), []).append({"record": record, "model": seen.model(key)})

    for answers in rated.values():
        picks += _pair_up(answers, skipped)
    used = Counter(p["how"] for p in picks)
    summary = {**seen.counts(),
               "used": {"pairs_from_corrections": used["correction"], "pairs_from_ratings": used["ratings"],
                        "unpaired_true": used["up"], "unpaired_false": used["down"]},
               "skipped": counted(skipped), "bad_examples": bad_examples}
    return picks, summary


def _pair_up(answers: list[dict[str, Any]], skipped: Counter[str]) -> list[dict[str, Any]]:
    """Pairs (up over down) and KTO records from the rated answers to one prompt."""
    labels: dict[str, set[bool]] = {}
    for a in answers:
        labels.setdefault(comparable(a["record"]["completion"]), set()).add(a["record"]["label"])
    ups, downs = [], []
    for a in answers:
        if len(labels[comparable(a["record"]["completion"])]) == 2:
            skipped["rated_both_ways"] += 1
        else:
            (ups if a["record"]["label"] else downs).append(a)
    # What is left has no text in both lists, so chosen and rejected always differ.
    picks = [{"record": {"prompt": up["record"]["prompt"], "chosen": up["record"]["completion"],
                         "rejected": down["record"]["completion"]},
              "models": sorted({up["model"], down["model"]}), "how": "ratings"}
             for up, down in zip(ups, downs, strict=False)]
    n = len(picks)
    for lone in ups[n:] + downs[n:]:
        picks.append({"record": lone["record"], "models": [lone["model"]], "how": "up" if lone["record"]["label"] else "down"})
    return picks


def prompt_key(prompt: list[dict[str, str]]) -> str:
    """Prompts that differ in whitespace only are the same prompt."""
    return json.dumps([[m["role"], comparable(m["content"])] for m in prompt], ensure_ascii=False)


def _same(a: str, b: str) -> bool:
    return comparable(a) == comparable(b)


def comparable(text: str) -> str:
    """A text as compared here: cleaned as `prepare` cleans it, runs of whitespace as one space (a
    correction that only respaces the answer says nothing about which is better)."""
    return " ".join(clean_text(text).split())
