"""One model's outcome on each item of a split, for the gate of `llmkit compare BASE TUNED`.

An item is a record of the split. What its outcome is depends on the data:
- classify: whether the predicted label is the true one (score 1 or 0);
- chat: the greedy reply to the conversation up to its last assistant turn, scored by ROUGE-L F1
  against that turn (the item passes when the score reaches compare.item_pass_score);
- lm: the record's loss per token (nats), compared between the two models;
- preference: whether the model ranks the pair's chosen answer above its rejected one by mean log-prob per
  answer token (length-normalised, so a longer chosen answer is not penalised for its length; score 1 or 0).
  Rated answers without a partner (KTO records) are not items when the split has pairs;
- rated (a preference split of KTO records only): each rated answer's mean log-prob per token, scored by the
  share of answers of the other rating it ranks right against (a desirable answer above, an undesirable one
  below), so the split's figure is the AUC of the model's likelihood separating desirable from undesirable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmkit.errors import UserError
from llmkit.models.io import Model

LM_CONTEXT = 1024  # per-record perplexity windows: at most this, at most the model's context


def item_id(record: dict[str, Any], index: int, split: str) -> str:
    """Where the item comes from: its source file:line when the dataset kept it, else split#index."""
    return str(record.get("source") or f"{split}#{index}")


def refuse_export(model: Model) -> None:
    if (model.lineage or {}).get("format") in ("gguf", "onnx"):
        raise UserError(f"{model.ref} is a {(model.lineage or {})['format']} export; the gate compares the models "
                        "exports are made from (compare before exporting)")


def load_lm(model: Model):
    from llmkit.models.io import load_causal_lm

    refuse_export(model)
    return load_causal_lm(model)


def classifier_items(model: Model, records: list[dict], batch_size: int = 32) -> list[dict[str, Any]]:
    """[{"score": 1.0 | 0.0, "predicted": label}] per record."""
    from llmkit.eval.classification import in_model_spelling
    from llmkit.predict import classify_texts
    from llmkit.runtime.backends import load_classifier_on_runtime

    clf, tokenizer, labels = load_classifier_on_runtime(model)
    records = in_model_spelling(records, labels)
    unknown = sorted({r["label"] for r in records} - set(labels))
    if unknown:
        raise UserError(f"the split has labels {unknown} that {model.ref} does not know; its labels: {labels}")
    max_length = (model.lineage or {}).get("max_length") or 512
    predicted = [p["label"] for p in classify_texts(clf, tokenizer, labels, [r["text"] for r in records], max_length, batch_size)]
    return [{"score": float(p == r["label"]), "predicted": p} for p, r in zip(predicted, records, strict=True)]


def chat_items(lm, tokenizer, records: list[dict], max_new_tokens: int, progress=None) -> list[dict[str, Any]]:
    """[{"score": ROUGE-L F1, "prompt": last user turn, "reference", "prediction"}] per conversation."""
    from rouge_score import rouge_scorer

    from llmkit.eval.batched import greedy_replies
    from llmkit.generate import chat_prompt

    prompts, references, asked, end_ids = [], [], [], []
    for record in records:
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt, end_ids = chat_prompt(tokenizer, messages[:last])
        prompts.append(prompt)
        references.append(messages[last]["content"])
        asked.append(next((m["content"] for m in reversed(messages[:last]) if m["role"] == "user"), ""))
    replies = greedy_replies(lm, tokenizer, prompts, max_new_tokens, end_ids, progress=progress)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [{"score": scorer.score(reference, reply)["rougeL"].fmeasure, "prompt": question, "reference": reference,
             "prediction": reply.strip()} for question, reference, reply in zip(asked, references, replies, strict=True)]


def lm_items(lm, tokenizer, records: list[dict], progress=None) -> list[dict[str, Any]]:
    """[{"loss": nats per token, "nll": summed nats, "tokens": scored tokens}] per document."""
    from llmkit.eval.lm import stream_nll, token_stream

    context = min(getattr(lm.config, "max_position_embeddings", None) or LM_CONTEXT, LM_CONTEXT)
    task = progress.add_task("documents", total=len(records)) if progress is not None else None
    out = []
    for record in records:
        ids = token_stream(tokenizer, [record["text"]])  # the separator first, as in lm eval
        if len(ids) < 2:
            nll, count = 0.0, 0
        else:
            nll, count = stream_nll(lm, np.asarray(ids), context, context)
        out.append({"loss": nll / count if count else 0.0, "nll": nll, "tokens": count})
        if task is not None:
            progress.advance(task)
    return out


def preference_items(lm, tokenizer, records: list[dict], progress=None) -> list[dict[str, Any]]:
    """[{"score": 1.0 | 0.0, "margin": mean log-prob of chosen minus rejected, "prompt", "chosen", "rejected"}] per pair.

    Prompt and answer are rendered with the model's chat template (llmkit's when it has none), as the
    preference trainers render them: the answer's tokens are what the full rendering adds after the prompt
    with its generation prompt.
    """
    pairs = [r for r in records if "chosen" in r]
    if not pairs:
        raise UserError("the split holds rated answers only (KTO records) and no pair to compare; the preference gate "
                        "scores pairs (chosen over rejected)")
    answer_logp = _answer_scorer(lm, tokenizer)
    task = progress.add_task("pairs", total=len(pairs)) if progress is not None else None
    out = []
    for record in pairs:
        chosen, rejected = (answer_logp(record["prompt"], record[key]) for key in ("chosen", "rejected"))
        out.append({"score": float(chosen > rejected), "margin": chosen - rejected, "prompt": _question(record),
                    "chosen": record["chosen"], "rejected": record["rejected"]})
        if task is not None:
            progress.advance(task)
    return out


def rated_items(lm, tokenizer, records: list[dict], progress=None) -> list[dict[str, Any]]:
    """[{"score": share of the other rating's answers ranked right against, "logp", "prompt", "completion", "label"}]
    per rated answer (KTO records): what a KTO-tuned model should improve, desirable answers more likely than
    undesirable ones, scored without a partner for each answer."""
    answer_logp = _answer_scorer(lm, tokenizer)
    task = progress.add_task("rated answers", total=len(records)) if progress is not None else None
    logps = []
    for record in records:
        logps.append(answer_logp(record["prompt"], record["completion"]))
        if task is not None:
            progress.advance(task)
    good = np.array([lp for lp, r in zip(logps, records, strict=True) if r["label"]])
    bad = np.array([lp for lp, r in zip(logps, records, strict=True) if not r["label"]])
    out = []
    for lp, record in zip(logps, records, strict=True):
        # ties count half, as in the AUC; the mean of these scores over the split is the AUC
        others, sign = (bad, 1.0) if record["label"] else (good, -1.0)
        score = float(np.mean((sign * (lp - others) > 0) + 0.5 * (lp == others)))
        out.append({"score": score, "logp": lp, "prompt": _question(record), "completion": record["completion"],
                    "label": bool(record["label"])})
    return out


def _question(record: dict) -> str:
    return next((m["content"] for m in reversed(record["prompt"]) if m["role"] == "user"), "")


def _answer_scorer(lm, tokenizer):
    """answer_logp(prompt messages, answer) -> the answer's mean log-prob per token under lm."""
    import torch

    from llmkit.data.tokenizer import CHAT_TEMPLATE

    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    device = next(lm.parameters()).device

    def answer_logp(prompt_messages: list[dict], answer: str) -> float:
        prompt = list(_ids(tokenizer.apply_chat_template(prompt_messages, tokenize=True, add_generation_prompt=True)))
        full = list(_ids(tokenizer.apply_chat_template([*prompt_messages, {"role": "assistant", "content": answer}],
                                                       tokenize=True)))
        start = len(prompt) if full[: len(prompt)] == prompt else _common_prefix(prompt, full)
        with torch.inference_mode():
            logits = lm(input_ids=torch.tensor([full], device=device)).logits[0, start - 1: -1].float()
        targets = torch.tensor(full[start:], device=device)
        logps = logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
        return float(logps.mean()) if len(targets) else float("-inf")

    return answer_logp


def _ids(rendered) -> list[int]:
    return rendered["input_ids"] if hasattr(rendered, "keys") else rendered


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return max(n, 1)
