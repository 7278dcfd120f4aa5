"""Text generation: prompts in, text out, over the token-id decoders of `llmkit.runtime`.

`generate(model, tokenizer, prompt)` encodes the prompt, decodes with `runtime.decoder.generate_ids`
(the fast Llama path when it applies) and turns the ids into text pieces as they become stable
(`runtime.detokenize.TextStream`), honouring stop strings and the chat template's end of turn.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from llmkit.errors import UserError
from llmkit.models.io import Model
from llmkit.runtime.decoder import eos_set, generate_ids, get_decoder, prompt_in_context
from llmkit.runtime.detokenize import TextStream


@dataclass
class GenerationResult:
    text: str  # generated text only; excludes the prompt, special tokens and any stop string
    token_ids: list[int]  # every sampled token, including a final EOS or the tokens of a stop string
    prompt_tokens: int  # the prompt's tokens the model saw (a prompt longer than the context keeps its end)
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    seconds: float
    first_token_seconds: float



def encode_prompt(tokenizer, prompt: str) -> list[int]:
    # Without special tokens, then BOS by hand: a template post-processor may also append EOS, which
    # would tell the model the text is over.
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def unknown_characters(tokenizer, text: str) -> list[str]:
    """The distinct pieces of `text` the tokenizer reads as its unknown token, in order of first appearance: a
    character-level model knows only the characters of its training text, and would otherwise see them silently
    as <|unk|>. Empty for tokenizers without an unknown token (byte-level BPE reads anything)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or not text:
        return []
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces = [text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"], strict=True) if i == unk]
    return list(dict.fromkeys(p for p in pieces if p))


# Tokens that end an assistant turn in the chat templates llmkit and common models use; the model
# starting the user's next turn ends the reply too.
END_OF_TURN = ("<|end|>", "<|user|>", "<|im_end|>", "<|eot_id|>")


def chat_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> tuple[str, list[int]]:
    """The prompt for the assistant's next turn, and the token ids that end that turn.

    `tools` (OpenAI function definitions) go to a template that reads them. Without a chat template the
    conversation is plain text, one message per line, and the model simply continues it.
    """
    if getattr(tokenizer, "chat_template", None):
        vocab = tokenizer.get_vocab()
        extra = {"tools": tools} if tools else {}
        try:
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        except Exception as err:
            from jinja2 import TemplateError

            # the template is the model's (rendered in transformers' sandbox): its own raise_exception for roles it
            # does not take, or the sandbox stopping what a template may not do, is a fact about the model
            if not isinstance(err, TemplateError):
                raise
            raise UserError(f"the model's chat template failed on these messages: {type(err).__name__}: {err}") from None
        return prompt, [vocab[m] for m in END_OF_TURN if m in vocab]
    return "".join(f"{m['content']}\n" for m in messages), []


def _backend_ids(backend, ids: list[int], max_new_tokens: int, eos: set[int], sampling: dict):
    """Token ids sampled on a runtime backend (prefill/step on ids), as `generate_ids` samples on a torch module;
    the answer ends at the context (no window shift: a backend's cache is its own)."""
    from llmkit.runtime.sampling import Sampler

    if backend.max_len:
        max_new_tokens = min(max_new_tokens, backend.max_len - len(ids))
    sampler = Sampler(backend.vocab_size, ids, **sampling)
    state, logits = backend.prefill(ids, len(ids) + max_new_tokens)
    for i in range(max_new_tokens):
        token = sampler(logits.float())
        yield token
        if token in eos or i == max_new_tokens - 1:
            return
        logits = backend.step(state, token)


def generate(model, tokenizer, prompt: str, *, max_new_tokens: int = 100, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             stop: list[str] | None = None, seed: int | None = None,
             on_text: Callable[[str], None] | None = None,
             stop_token_ids: list[int] | None = None) -> GenerationResult:
    """Generate a completion of `prompt`; `on_text` receives each new piece of text as it is ready.

    `stop_token_ids` end the text like EOS does (a chat template's end-of-turn token, say).
    """
    if isinstance(model, str | os.PathLike | Model):
        raise UserError("generate takes the loaded model and its tokenizer: model, tokenizer = "
                        f"llmkit.models.io.load_causal_lm({str(getattr(model, 'ref', model))!r})")
    if not isinstance(prompt, str):
        raise UserError(f"generate's prompt is text (a str), not {type(prompt).__name__}")
    start = time.perf_counter()
    ids = encode_prompt(tokenizer, prompt)
    if not ids:
        raise UserError("empty prompt and the tokenizer has no BOS token to start from: give a prompt")
    on_backend = hasattr(model, "prefill") and hasattr(model, "step")  # an export's runtime (a GGUF on llama.cpp)
    max_len = model.max_len if on_backend else get_decoder(model).max_len
    ids = prompt_in_context(ids, max_new_tokens, max_len, tokenizer.bos_token_id)
    model_eos = set(getattr(model, "eos_token_ids", ())) if on_backend else eos_set(model.config.eos_token_id)
    eos = eos_set(tokenizer.eos_token_id) | model_eos | set(stop_token_ids or [])
    stream = TextStream(tokenizer, stop)
    out: list[int] = []
    finish_reason, first = "length", None
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed)
    tokens = (_backend_ids(model, ids, max_new_tokens, eos, sampling) if on_backend else
              generate_ids(model, ids, max_new_tokens=max_new_tokens, eos_token_id=list(eos), **sampling))
    for tok in tokens:
        first = first if first is not None else time.perf_counter() - start
        out.append(tok)
        piece = stream.push(out)
        if piece and on_text:
            on_text(piece)
        if tok in eos or stream.stopped:
            finish_reason = "stop"
            break
    piece = stream.finish()
    if piece and on_text:
        on_text(piece)
    seconds = time.perf_counter() - start
    return GenerationResult(text=stream.text, token_ids=out, prompt_tokens=len(ids),
                            finish_reason=finish_reason, seconds=seconds,
                            first_token_seconds=first if first is not None else seconds)
