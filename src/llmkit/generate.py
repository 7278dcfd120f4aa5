"""Text generation for llmkit's models: our own decode loop over a per-sequence KV cache.

Why not `model.generate()`: at llmkit's model sizes HF's generation loop costs more in per-token
framework overhead than in arithmetic, and a serving engine needs a lower-level core anyway:
`get_decoder(model)` gives an object with `prefill(ids) -> (state, logits)` and
`step(states, token_ids) -> logits (B, vocab)`, so requests can join and leave a running batch
between decode steps. Llama models run on `llmkit.models.fast_llama.FastLlama`; anything it
doesn't implement (other architectures, RoPE scaling) runs the HF module with its own cache, which
is slower but still exact.

Context limit: when prompt + max_new_tokens would exceed config.max_position_embeddings, the prompt
is truncated from the left, keeping its most recent tokens (and a leading BOS, if it had one);
if max_new_tokens alone fills the context, at least one prompt token is kept and fewer tokens are
generated.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from llmkit.models.fast_llama import FastLlama, unsupported_reason


@dataclass
class GenerationResult:
    text: str  # generated text only; excludes the prompt, special tokens and any stop string
    token_ids: list[int]  # every sampled token, including a final EOS or the tokens of a stop string
    prompt_tokens: int  # after context truncation
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    seconds: float
    first_token_seconds: float


# --- decoders ----------------------------------------------------------------------------------


@dataclass
class HFState:
    cache: object  # the model's own KV cache object
    length: int


def cache_key(model) -> str:
    """The forward argument (and output field) of the KV cache: transformers 5 renamed past_key_values
    to cache (the old name warns and goes in 5.40); older releases know only the old one."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class HFDecoder:
    """The same prefill/step interface over the HF module itself, for models FastLlama can't run."""

    def __init__(self, model):
        self.model = model
        self.max_len = getattr(model.config, "max_position_embeddings", None)
        self.key = cache_key(model)

    @torch.inference_mode()
    def prefill(self, ids: list[int], state: HFState | None = None, capacity: int | None = None):
        device = next(self.model.parameters()).device
        past = state.cache if state else None
        out = self.model(input_ids=torch.tensor([ids], device=device), use_cache=True, **{self.key: past})
        length = (state.length if state else 0) + len(ids)
        return HFState(out[self.key], length), out.logits[0, -1]

    @torch.inference_mode()
    def step(self, states: list[HFState], token_ids: list[int]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        logits = []
        for s, tok in zip(states, token_ids, strict=True):
            ids = torch.tensor([[tok]], device=device)
            out = self.model(input_ids=ids, use_cache=True, **{self.key: s.cache})
            s.cache, s.length = out[self.key], s.length + 1
            logits.append(out.logits[0, -1])
        return torch.stack(logits)  # (B, vocab)


# FastLlama copies weights into its own layout, so it is built once per model and rebuilt only when
# a parameter changes (training step, load_state_dict, .to()): _version and data_ptr catch those.
# The layout also depends on the torch thread count (weights are split per thread).
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fingerprint(model) -> tuple:
    return torch.get_num_threads(), tuple((p.data_ptr(), p._version) for p in model.parameters())


def get_decoder(model, *, fast: bool = True) -> FastLlama | HFDecoder:
    """The decoder for `model`: FastLlama when it supports the model (and `fast`), else HFDecoder."""
    if not fast or unsupported_reason(model):
        return HFDecoder(model)
    key = _fingerprint(model)
    cached = _DECODERS.get(model)
    if cached is None or cached[0] != key:
        cached = (key, FastLlama(model))
        _DECODERS[model] = cached
    return cached[1]


# --- sampling ----------------------------------------------------------------------------------


class Sampler:
    """Picks the next token from logits for one sequence, in HF's processor order.

    Repetition penalty (over prompt + generated tokens), then temperature, top-k, top-p. Temperature
    0 is greedy. With a seed, a private torch.Generator makes the draws reproducible.
    """

    def __init__(self, vocab_size: int, prompt_ids: list[int], *, temperature: float = 0.8, top_k: int = 0,
                 top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None, device=None):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.penalty = repetition_penalty
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator(device=device or "cpu").manual_seed(seed)
        self.seen = None
        if repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(prompt_ids, dtype=torch.long, device=device)] = True

    def __call__(self, logits: torch.Tensor) -> int:
        logits = logits.float()  # (vocab,)
        if self.seen is not None:
            penalised = torch.where(logits < 0, logits * self.penalty, logits / self.penalty)
            logits = torch.where(self.seen, penalised, logits)
        if self.temperature <= 0:
            tok = int(logits.argmax())
        else:
            logits = logits / self.temperature
            if self.top_k > 0:
                kth = torch.topk(logits, min(self.top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if self.top_p < 1.0:
                # Drop the low tail whose total mass is <= 1 - top_p, always keeping the top token.
                sorted_logits, order = torch.sort(logits)
                tail = sorted_logits.softmax(-1).cumsum(-1) <= 1 - self.top_p
                tail[-1] = False
                logits = logits.masked_fill(tail.scatter(0, order, tail), float("-inf"))
            tok = _draw(logits.softmax(-1)[None], [self])[0]
        if self.seen is not None:
            self.seen[tok] = True
        return tok

    @property
    def plain(self) -> bool:
        """Only temperature applies (no penalty, top-k or top-p): rows can be sampled together."""
        return self.seen is None and self.top_k <= 0 and self.top_p >= 1.0

    @staticmethod
    def sample_batch(samplers: list[Sampler], logits: torch.Tensor) -> list[int]:
        """One token per row of logits (B, vocab), each with its own sampler; the same draws as
        calling each sampler, with greedy and plain-temperature rows done in one op each."""
        out: list[int | None] = [None] * len(samplers)
        greedy = [i for i, sm in enumerate(samplers) if sm.temperature <= 0 and sm.seen is None]
        plain = [i for i, sm in enumerate(samplers) if sm.temperature > 0 and sm.plain]
        if greedy:
            for i, tok in zip(greedy, logits[greedy].float().argmax(-1).tolist(), strict=True):
                out[i] = tok
        if plain:
            temps = torch.tensor([samplers[i].temperature for i in plain], device=logits.device)
            probs = (logits[plain].float() / temps[:, None]).softmax(-1)  # (P, vocab)
            for i, tok in zip(plain, _draw(probs, [samplers[i] for i in plain]), strict=True):
                out[i] = tok
        return [tok if tok is not None else samplers[i](logits[i]) for i, tok in enumerate(out)]


def _draw(probs: torch.Tensor, samplers: list[Sampler]) -> list[int]:
    """Inverse-CDF draws, one uniform per row from that row's generator: (P, vocab) -> P token ids."""
    u = torch.stack([torch.rand((), generator=sm.generator, device=probs.device) for sm in samplers])  # (P,)
    cdf = probs.cumsum(-1)
    # A floor above 0: u = 0 must not pick a leading token of probability 0.
    target = (u * cdf[:, -1]).clamp_(min=1e-12)[:, None]
    idx = torch.searchsorted(cdf, target).clamp_(max=probs.shape[-1] - 1)  # (P, 1)
    return idx[:, 0].tolist()


# --- decode loop -------------------------------------------------------------------------------


def fit_context(input_ids: list[int], max_new_tokens: int, max_len: int | None,
                bos_token_id: int | None = None) -> tuple[list[int], int]:
    """Left-truncate the prompt so prompt + new tokens fit in max_len; returns (ids, max_new_tokens)."""
    ids = list(input_ids)
    if not max_len or len(ids) + max_new_tokens <= max_len:
        return ids, max_new_tokens
    keep = max(1, max_len - max_new_tokens)
    if len(ids) > keep:
        if bos_token_id is not None and ids[0] == bos_token_id and keep > 1:
            ids = [ids[0]] + ids[len(ids) - (keep - 1):]
        else:
            ids = ids[len(ids) - keep:]
    return ids, min(max_new_tokens, max_len - len(ids))


def _eos_set(eos_token_id: int | list[int] | None) -> set[int]:
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


def generate_ids(model, input_ids: list[int], *, max_new_tokens: int = 100, temperature: float = 0.8,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, seed: int | None = None,
                 eos_token_id: int | list[int] | None = None) -> Iterator[int]:
    """Yield new token ids one at a time; stops after max_new_tokens or after yielding an EOS id.

    eos_token_id: id or ids that end generation; None means only max_new_tokens does. The prompt is
    left-truncated to fit the context (see the module docstring).
    """
    if not input_ids:
        raise ValueError("generate_ids needs at least one prompt token")
    decoder = get_decoder(model)
    ids, max_new = fit_context(input_ids, max_new_tokens, decoder.max_len, model.config.bos_token_id)
    if max_new <= 0:
        return
    eos = _eos_set(eos_token_id)
    device = next(model.parameters()).device
    sampler = Sampler(model.config.vocab_size, ids, temperature=temperature, top_k=top_k, top_p=top_p,
                      repetition_penalty=repetition_penalty, seed=seed, device=device)
    state, logits = decoder.prefill(ids, capacity=len(ids) + max_new)
    for i in range(max_new):
        tok = sampler(logits)
        yield tok
        if tok in eos or i == max_new - 1:
            return
        logits = decoder.step([state], [tok])[0]


class TextStream:
    """Turns a growing list of generated ids into stable text pieces, watching for stop strings.

    Decodes incrementally (as vLLM does): each push decodes a short window that starts a few tokens
    back and keeps what it adds beyond the window's previous text, so byte-level BPE pieces that only
    form a character together, and tokenizers whose pieces depend on their neighbours, come out
    right at O(1) cost per token rather than re-decoding everything. Held back: a trailing U+FFFD
    (an incomplete UTF-8 sequence) and any tail that could be the start of a stop string.
    """

    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.emitted = ""
        self.text = ""
        self.stopped = False
        self.decoded = ""  # text of ids[:read], complete characters only
        self.prefix = self.read = 0  # the window ids[prefix:read] decodes to the tail of `decoded`

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, ids: list[int]) -> str:
        """Update with all generated ids so far; return the newly stable text ('' if none)."""
        head = self._decode(ids[self.prefix:self.read])
        tail = self._decode(ids[self.prefix:])
        pending = tail[len(head):] if tail.startswith(head) else ""
        if pending and not tail.endswith("\ufffd"):
            self.decoded += pending
            self.prefix, self.read = self.read, len(ids)
            pending = ""
        text = self.decoded + pending
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = text[:min(hits)], True
            return self.finish()
        self.text = stable = text
        while stable.endswith("\ufffd"):
            stable = stable[:-1]
        # Only after the U+FFFD cut: the incomplete character may be what completes a stop string.
        hold = max((k for s in self.stop for k in range(1, min(len(s), len(stable) + 1))
                    if stable.endswith(s[:k])), default=0)
        return self._emit(stable[:len(stable) - hold])

    def finish(self) -> str:
        """Release whatever was held back; after this, the pieces concatenate to `self.text`."""
        return self._emit(self.text)

    def _emit(self, stable: str) -> str:
        if len(stable) <= len(self.emitted) or not stable.startswith(self.emitted):
            return ""
        piece, self.emitted = stable[len(self.emitted):], stable
        return piece


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    # Without special tokens, then BOS by hand: a template post-processor may also append EOS, which
    # would tell the model the text is over.
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


# Tokens that end an assistant turn in the chat templates llmkit and common models use; the model
# starting the user's next turn ends the reply too.
END_OF_TURN = ("<|end|>", "<|user|>", "<|im_end|>", "<|eot_id|>")


def chat_prompt(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
    """The prompt for the assistant's next turn, and the token ids that end that turn.

    Without a chat template the conversation is plain text, one message per line, and the model
    simply continues it.
    """
    if getattr(tokenizer, "chat_template", None):
        vocab = tokenizer.get_vocab()
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt, [vocab[m] for m in END_OF_TURN if m in vocab]
    return "".join(f"{m['content']}\n" for m in messages), []


def generate(model, tokenizer, prompt: str, *, max_new_tokens: int = 100, temperature: float = 0.8,
             top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             stop: list[str] | None = None, seed: int | None = None,
             on_text: Callable[[str], None] | None = None,
             stop_token_ids: list[int] | None = None) -> GenerationResult:
    """Generate a completion of `prompt`; `on_text` receives each new piece of text as it is ready.

    `stop_token_ids` end the text like EOS does (a chat template's end-of-turn token, say).
    """
    start = time.perf_counter()
    ids = encode_prompt(tokenizer, prompt)
    if not ids:
        raise ValueError("empty prompt and the tokenizer has no BOS token")
    ids, max_new = fit_context(ids, max_new_tokens, get_decoder(model).max_len, tokenizer.bos_token_id)
    eos = _eos_set(tokenizer.eos_token_id) | _eos_set(model.config.eos_token_id) | set(stop_token_ids or [])
    stream = TextStream(tokenizer, stop)
    out: list[int] = []
    finish_reason, first = "length", None
    for tok in generate_ids(model, ids, max_new_tokens=max_new, temperature=temperature, top_k=top_k,
                            top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
                            eos_token_id=list(eos)):
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
