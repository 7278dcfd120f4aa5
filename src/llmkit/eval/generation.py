"""Generation metrics on {prompt, reference} sets: exact match, ROUGE-L, BLEU, with greedy decoding."""

from __future__ import annotations

from typing import Any


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Exact match (after stripping whitespace), mean ROUGE-L F1 (rouge-score) and corpus BLEU (sacrebleu)."""
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError:
        from llmkit.errors import UserError

        raise UserError("generation metrics need rouge-score and sacrebleu: pip install 'llmkit[eval]'") from None

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    n = len(predictions)
    exact = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    rouge = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True))
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score if n else 0.0
    return {"exact_match": exact / max(n, 1), "rougeL": rouge / max(n, 1), "bleu": bleu, "examples": n}


def generate_all(model, tokenizer, prompts: list[str], max_new_tokens: int, chat: bool, progress=None) -> list[dict[str, Any]]:
    """Greedy completions; with chat=True each prompt is a user turn rendered with the chat template."""
    from llmkit.generate import generate

    stop_ids = []
    if chat:
        end = tokenizer.convert_tokens_to_ids("<|end|>")
        stop_ids = [end] if isinstance(end, int) and end != tokenizer.unk_token_id else []
    task = progress.add_task("generate", total=len(prompts)) if progress is not None else None
    out = []
    for prompt in prompts:
        text = prompt
        if chat:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        result = generate(model, tokenizer, text, max_new_tokens=max_new_tokens, temperature=0.0, stop_token_ids=stop_ids)
        out.append({"prompt": prompt, "prediction": result.text, "tokens": len(result.token_ids)})
        if task is not None:
            progress.advance(task)
    return out
