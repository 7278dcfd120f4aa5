"""The general-ability check shipped with llmkit: did fine-tuning cost the model what it knew before?

Two small sets written for llmkit (package data in eval/general/): `english.txt`, a few kilobytes of
plain English prose, scored as perplexity and bits per byte; `instructions.jsonl`, short questions with
the answers that count as right, asked one user turn each (with the model's chat template when it has
one) and answered greedily up to the end of the first sentence. An answer is right when it contains one
of the accepted answers as whole words, ignoring case: "The capital of France is Paris." answers "Paris".
Small enough to take seconds on a 135M model on two cores, and the same for every model, so BASE and
TUNED compare on it.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

GENERAL_NEW_TOKENS = 24  # the accepted answers are a word or two; a sentence around them fits
FIRST_SENTENCE = [". ", "\n"]  # the answer is in the first sentence; what follows only costs time
GENERAL_CONTEXT = 512  # perplexity windows: at most this, at most the model's context


@cache
def general_text() -> list[str]:
    """The prose, one paragraph per item (each scored after a separator, like documents in lm eval)."""
    text = resources.files("llmkit.eval").joinpath("general/english.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


@cache
def general_instructions() -> list[dict[str, Any]]:
    """[{"instruction": str, "answers": [str, ...]}]."""
    lines = resources.files("llmkit.eval").joinpath("general/instructions.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def answered(prediction: str, answers: list[str]) -> bool:
    """Whether `prediction` contains one of `answers` as whole words (case ignored); a number as a whole
    number ("0" is not in "-18.0", "7" not in "7.5")."""
    return any(re.search(rf"(?<![\w.,-]){re.escape(a)}(?!\w|[.,]\d)", prediction, flags=re.IGNORECASE) for a in answers)


def general_check(lm, tokenizer, progress=None, max_new_tokens: int = GENERAL_NEW_TOKENS) -> dict[str, Any]:
    """{"perplexity", "bits_per_byte", "answered" (share right), "items": [{instruction, prediction, correct}]}."""
    from llmkit.eval.batched import greedy_replies
    from llmkit.eval.lm import lm_metrics
    from llmkit.generate import chat_prompt

    context = min(getattr(lm.config, "max_position_embeddings", None) or GENERAL_CONTEXT, GENERAL_CONTEXT)
    figures = lm_metrics(lm, tokenizer, general_text(), context, context, batch_size=4)
    questions = general_instructions()
    prompts, end_ids = [], []
    for item in questions:
        prompt, end_ids = chat_prompt(tokenizer, [{"role": "user", "content": item["instruction"]}])
        prompts.append(prompt)
    replies = greedy_replies(lm, tokenizer, prompts, max_new_tokens, end_ids, FIRST_SENTENCE, batch_size=len(prompts),
                             progress=progress, label="general check")
    items = [{"instruction": q["instruction"], "answers": q["answers"], "prediction": r.strip(),
              "correct": answered(r, q["answers"])} for q, r in zip(questions, replies, strict=True)]
    return {"perplexity": figures["perplexity"], "bits_per_byte": figures["bits_per_byte"],
            "answered": sum(i["correct"] for i in items) / len(items), "items": items}
