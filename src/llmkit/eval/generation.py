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
    """Greedy completions; with chat=True each prompt is a user turn rendered with the chat template.

    `model` is a torch causal LM, or a runtime backend (`prefill`/`step` on token ids: a GGUF on llama.cpp),
    which has no torch forward to call; both decode the same prompt ids and stop at the same tokens. A torch
    model decodes the prompts in batches (`eval.batched`): one step reads the weights once for every row.
    """
    from llmkit.eval.batched import greedy_reply_ids

    stop_ids = []
    if chat:
        end = tokenizer.convert_tokens_to_ids("<|end|>")
        stop_ids = [end] if isinstance(end, int) and end != tokenizer.unk_token_id else []
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             if chat else p for p in prompts]
    if not (hasattr(model, "prefill") and hasattr(model, "step")):
        replies = greedy_reply_ids(model, tokenizer, texts, max_new_tokens, stop_ids, progress=progress, label="generate")
        return [{"prompt": p, "prediction": tokenizer.decode(ids, skip_special_tokens=True), "tokens": len(ids)}
                for p, ids in zip(prompts, replies, strict=True)]
    task = progress.add_task("generate", total=len(prompts)) if progress is not None else None
    out = []
    for prompt, text in zip(prompts, texts, strict=True):
        prediction, token_ids = greedy_on_backend(model, tokenizer, text, max_new_tokens, stop_ids)
        out.append({"prompt": prompt, "prediction": prediction, "tokens": len(token_ids)})
        if task is not None:
            progress.advance(task)
    return out


def greedy_on_backend(backend, tokenizer, prompt: str, max_new_tokens: int, stop_token_ids: list[int]) -> tuple[str, list[int]]:
    """`llmkit.generate.generate` at temperature 0, on a backend: the same prompt ids (BOS, left truncation to
    the context), the same end tokens (the tokenizer's EOS, the config's, the given ones), the same text."""
    from llmkit.generate import encode_prompt
    from llmkit.runtime.decoder import eos_set, fit_context
    from llmkit.runtime.detokenize import TextStream

    ids, max_new = fit_context(encode_prompt(tokenizer, prompt), max_new_tokens, backend.max_len, tokenizer.bos_token_id)
    eos = eos_set(tokenizer.eos_token_id) | set(getattr(backend, "eos_token_ids", ())) | set(stop_token_ids)
    stream, out = TextStream(tokenizer), []
    if max_new <= 0:
        return "", out
    state, logits = backend.prefill(ids, len(ids) + max_new)
    for i in range(max_new):
        token = int(logits.argmax())
        out.append(token)
        stream.push(out)
        if token in eos or i == max_new - 1:
            break
        logits = backend.step(state, token)
    stream.finish()
    return stream.text, out
