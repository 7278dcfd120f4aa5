"""Token attributions: Integrated Gradients, occlusion, Kernel SHAP and attention rollout.

A `Subject` is one loaded model plus one tokenized input and the target being explained: a class
label (classifiers), the next token, or the log-probability of a completion (causal LMs). Every
method scores the shown tokens (the prompt; a completion is the target, not an input); special
tokens (CLS/SEP/BOS) are shown but never perturbed and left out of score normalisation.
"""

from __future__ import annotations

import time
import warnings as pywarnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from llmkit.errors import UserError
from llmkit.explain.pieces import special_positions, unknown_causal, unknown_text

METHODS = ("ig", "occlusion", "shap", "attention")


class OutOfTime(Exception):
    """The explanation passed its deadline; raised between forward passes, so the work stops there."""


@dataclass
class Subject:
    """A model, one input and its target, with a batched scoring function."""

    model: Any
    tokenizer: Any
    kind: str                      # "classifier" | "causal"
    ids: torch.Tensor              # [n] the whole sequence fed to the model (prompt, then any completion)
    n_shown: int                   # the first n_shown positions are the explained tokens
    special: list[bool]            # per shown position
    fill_id: int                   # what replaces a token (IG baseline, occlusion, deletion)
    fill_token: str
    target: str                    # label, next token or completion text
    target_index: int | None       # class id or token id (None for a completion)
    quantity: str                  # "probability" | "log_probability": what the scores explain
    score_fn: Callable[[torch.Tensor], torch.Tensor]  # [B, n] ids -> [B] target quantity (differentiable)
    labels: list[str] | None = None
    warnings: list[str] = field(default_factory=list)
    deadline: float | None = None  # time.perf_counter() past which every method stops (OutOfTime)
    batch_tokens: int = 0          # token positions per forward pass (bounds peak memory); 0 = 64 rows
    unknown_text: dict[int, str] = field(default_factory=dict)  # position -> the text read as the unknown token

    @property
    def rows_per_forward(self) -> int:
        return max(1, self.batch_tokens // len(self.ids)) if self.batch_tokens else 64

    def check_time(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise OutOfTime

    @property
    def free(self) -> list[int]:
        """Shown positions that may be perturbed (everything but special tokens)."""
        return [i for i in range(self.n_shown) if not self.special[i]]

    def score(self, batch: torch.Tensor) -> torch.Tensor:
        """The target quantity for a batch of id sequences, without gradients, in chunks (the deadline
        is checked before each)."""
        out = []
        chunk = self.rows_per_forward
        with torch.no_grad():
            for start in range(0, batch.shape[0], chunk):
                self.check_time()
                out.append(self.score_fn(batch[start: start + chunk]).float().cpu())
        return torch.cat(out)

    def tokens(self) -> list[str]:
        return [self.unknown_text.get(i) or display_token(self.tokenizer, int(t)) for i, t in enumerate(self.ids[: self.n_shown])]


def display_token(tokenizer, token_id: int) -> str:
    text = tokenizer.convert_ids_to_tokens(token_id)
    if text is None:
        text = tokenizer.decode([token_id])
    # Byte-level BPE and SentencePiece markers for a leading space / newline.
    return str(text).replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n")


def _fill_id(tokenizer) -> tuple[int, str]:
    """What stands in for a removed token: a pad token of its own (BERT's [PAD], llmkit's <|pad|>: Captum's usual
    baseline), else a single space. Never a token that ends a text or a turn: SmolLM2 pads with <|im_end|> and its
    unk is <|endoftext|>; either one in a prompt cuts the context before it, and every token scored the same."""
    ends = {tokenizer.bos_token_id, tokenizer.eos_token_id}
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in ends:
        return int(tokenizer.pad_token_id), str(tokenizer.pad_token)
    space = tokenizer.encode(" ", add_special_tokens=False)
    if len(space) == 1:
        return int(space[0]), display_token(tokenizer, int(space[0]))
    for name in ("pad_token", "unk_token", "eos_token"):
        tok = getattr(tokenizer, name, None)
        tid = getattr(tokenizer, f"{name}_id", None)
        if tok is not None and tid is not None:
            return int(tid), str(tok)
    return 0, display_token(tokenizer, 0)


def _keep(lm, n: int) -> dict[str, int]:
    """Ask for the logits of the last n positions only, when the model supports it (most do)."""
    import inspect

    return {"logits_to_keep": n} if "logits_to_keep" in inspect.signature(lm.forward).parameters else {}


@contextmanager
def _frozen(model):
    """No weight gradients while attributing: backward then only flows to the inputs (about a third less work)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def classifier_subject(clf, tokenizer, labels: list[str], text: str, target: str | None, max_length: int) -> Subject:
    """Explain the probability of `target` (default: the predicted label) for `text`, cleaned as predict cleans it."""
    from llmkit.data.clean import clean_classifier_input

    text = clean_classifier_input(text)
    warns: list[str] = []
    full = tokenizer(text)["input_ids"]
    enc = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    if len(full) > len(enc):
        warns.append(f"text is {len(full)} tokens, longer than the model's {max_length}; explaining the first {len(enc)}")
    ids = torch.tensor(enc, device=_device(clf))
    unknown = unknown_text(tokenizer, text, enc)
    special = special_positions(tokenizer, enc, unknown, warns)

    def score_fn(batch: torch.Tensor) -> torch.Tensor:
        return clf(input_ids=batch, attention_mask=torch.ones_like(batch)).logits.float().softmax(-1)[:, index]

    with torch.no_grad():
        probs = clf(input_ids=ids[None]).logits.float().softmax(-1)[0]
    if target is None:
        index = int(probs.argmax())
    elif target in labels:
        index = labels.index(target)
    else:
        raise UserError(f"unknown target label '{target}'; the model's labels are: {', '.join(labels)}", param="explain.target")
    fill_id, fill_token = _fill_id(tokenizer)
    return Subject(clf, tokenizer, "classifier", ids, len(enc), special, fill_id, fill_token, labels[index], index,
                   "probability", score_fn, labels=labels, warnings=warns, unknown_text=unknown)


def causal_subject(lm, tokenizer, text: str, target: str | None, completion: str | None) -> Subject:
    """Explain the next token's probability (`target` a token, default the most likely one), or the
    log-probability of `completion` following `text`."""
    from llmkit.generate import encode_prompt

    warns: list[str] = []
    prompt = encode_prompt(tokenizer, text)
    comp = tokenizer(completion, add_special_tokens=False)["input_ids"] if completion else []
    if completion is not None and not comp:
        raise UserError("--completion is empty: give the text whose log-probability to explain", param="explain.completion")
    context = int(getattr(lm.config, "max_position_embeddings", 0) or 0) or len(prompt) + len(comp)
    room = context - len(comp)
    if room < 2:
        raise UserError(f"the completion is {len(comp)} tokens; the model's context of {context} leaves no room for the text",
                        param="explain.completion")
    if len(prompt) > room:
        bos = tokenizer.bos_token_id
        keep = prompt[-(room - 1):] if bos is not None and prompt[0] == bos else prompt[-room:]
        # A byte-level cut may fall inside a character (床 is two tokens): start at the next whole one, not at '�'
        while len(keep) > 1 and "\ufffd" not in text and tokenizer.decode(keep[:4]).startswith("\ufffd"):
            keep = keep[1:]
        prompt = ([bos] if bos is not None and prompt[0] == bos else []) + keep
        warns.append(f"text is longer than the model's context of {context} tokens; explaining its last {len(prompt)} tokens")
    device = _device(lm)
    ids = torch.tensor(prompt + comp, device=device)
    unknown = unknown_causal(tokenizer, text, prompt)
    special = special_positions(tokenizer, prompt, unknown, warns)
    n = len(prompt)

    if comp:
        comp_t = torch.tensor(comp, device=device)

        def score_fn(batch: torch.Tensor) -> torch.Tensor:
            logp = lm(input_ids=batch, **_keep(lm, len(comp) + 1)).logits.float()[:, -len(comp) - 1: -1].log_softmax(-1)
            return logp.gather(-1, comp_t.expand(batch.shape[0], -1)[..., None])[..., 0].sum(-1)

        fill_id, fill_token = _fill_id(tokenizer)
        return Subject(lm, tokenizer, "causal", ids, n, special, fill_id, fill_token, completion, None,
                       "log_probability", score_fn, warnings=warns, unknown_text=unknown)

    with torch.no_grad():
        probs = lm(input_ids=ids[None]).logits.float()[0, -1].softmax(-1)
    if target is None:
        index = int(probs.argmax())
    else:
        tok = tokenizer(target, add_special_tokens=False)["input_ids"]
        if len(tok) != 1:
            raise UserError(f"--target '{target}' is {len(tok)} tokens for this model's tokenizer; a causal LM's target is "
                            "one next token (use --completion TEXT for longer continuations)", param="explain.target")
        if tok[0] == tokenizer.unk_token_id and target != tokenizer.unk_token:  # it explained the unknown token
            raise UserError(f"--target '{target}' is not in this model's vocabulary (it reads as {tokenizer.unk_token}); "
                            "give a token the model knows", param="explain.target")
        index = int(tok[0])

    def score_fn(batch: torch.Tensor) -> torch.Tensor:
        return lm(input_ids=batch, **_keep(lm, 1)).logits.float()[:, -1].softmax(-1)[:, index]

    fill_id, fill_token = _fill_id(tokenizer)
    from llmkit.explain.pieces import token_text

    return Subject(lm, tokenizer, "causal", ids, n, special, fill_id, fill_token, token_text(tokenizer, index), index,
                   "probability", score_fn, warnings=warns, unknown_text=unknown)


# -- methods -----------------------------------------------------------------------------------


def integrated_gradients(subject: Subject, steps: int = 50, internal_batch_size: int = 0) -> dict[str, Any]:
    """Layer Integrated Gradients on the input embeddings; baseline = the fill (pad) token at every
    free position. Per-token score = the attribution summed over the embedding dimension.
    Steps run `internal_batch_size` at a time (0: as many as fit the subject's batch_tokens, else all),
    so peak memory is one chunk's activations and gradients; the deadline is checked before each chunk."""
    from captum.attr import LayerIntegratedGradients

    model = subject.model
    ids = subject.ids[None]
    baseline = ids.clone()
    baseline[0, subject.free] = subject.fill_id

    def forward(batch: torch.Tensor) -> torch.Tensor:
        subject.check_time()
        return subject.score_fn(batch)

    chunk = internal_batch_size or (subject.rows_per_forward if subject.batch_tokens else steps)
    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    with pywarnings.catch_warnings(), _frozen(model):
        pywarnings.simplefilter("ignore", UserWarning)  # captum: "Input Tensor 0 did not already require gradients"
        attr, delta = lig.attribute(ids, baselines=baseline, n_steps=steps, internal_batch_size=min(chunk, steps),
                                    return_convergence_delta=True)
    scores = attr.sum(-1)[0, : subject.n_shown].detach().float().cpu().numpy()
    f_x, f_b = subject.score(torch.cat([ids, baseline])).tolist()
    return {"scores": scores, "convergence_delta": float(delta.abs().sum()), "f_input": f_x, "f_baseline": f_b,
            "steps": steps}


def occlusion(subject: Subject, span: int = 1) -> dict[str, Any]:
    """Replace each run of `span` free tokens by the fill token; a token's score is the mean drop of
    the target over the windows that cover it. All windows run as one batch (in chunks)."""
    free = subject.free
    span = max(1, min(span, len(free))) if free else 1
    windows = [free[s: s + span] for s in range(0, max(1, len(free) - span + 1))] if free else []
    scores = np.zeros(subject.n_shown, dtype=np.float32)
    base = float(subject.score(subject.ids[None])[0])
    if windows:
        batch = subject.ids[None].repeat(len(windows), 1)
        for row, window in enumerate(windows):
            batch[row, window] = subject.fill_id
        drops = base - subject.score(batch).numpy()
        total = np.zeros(subject.n_shown)
        count = np.zeros(subject.n_shown)
        for drop, window in zip(drops, windows, strict=True):
            total[window] += drop
            count[window] += 1
        scores = np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)
    return {"scores": scores, "span": span, "f_input": base}


def shap_samples(free_tokens: int, samples: int = 0) -> int:
    """Coalitions Kernel SHAP evaluates: `samples`, else max(200, 8 x free tokens), at most 2,048;
    none when one token or none is free (the exact value takes one forward)."""
    if free_tokens <= 1:
        return 0
    return samples or max(200, min(8 * free_tokens, 2048))


def kernel_shap(subject: Subject, samples: int = 0, seed: int = 0) -> dict[str, Any]:
    """Kernel SHAP (captum `KernelShap`) over a presence vector with one entry per free token: a
    coalition keeps some tokens and fills the others, so a token's score is its Shapley value
    estimate for the target. Samples: see `shap_samples`; coalitions run batched.

    With one free token there is nothing to estimate (and captum's coalition-size distribution is 0/0,
    NaN): its Shapley value is exactly f(input) - f(token filled)."""
    from captum.attr import KernelShap

    free = subject.free
    scores = np.zeros(subject.n_shown, dtype=np.float32)
    base = float(subject.score(subject.ids[None])[0])
    if not free:
        return {"scores": scores, "samples": 0, "f_input": base}
    if len(free) == 1:
        filled = subject.ids[None].clone()
        filled[0, free[0]] = subject.fill_id
        scores[free[0]] = base - float(subject.score(filled)[0])
        return {"scores": scores, "samples": 0, "f_input": base}
    samples = shap_samples(len(free), samples)
    free_t = torch.tensor(free, device=subject.ids.device)

    def forward(presence: torch.Tensor) -> torch.Tensor:  # [B, k] 1 = keep the token -> [B] target
        batch = subject.ids[None].repeat(presence.shape[0], 1)
        kept = presence.to(batch.device) > 0.5
        batch[:, free_t] = torch.where(kept, batch[:, free_t], torch.full_like(batch[:, free_t], subject.fill_id))
        return subject.score(batch)

    torch.manual_seed(seed)  # the coalitions captum samples
    with torch.no_grad():
        attr = KernelShap(forward).attribute(torch.ones(1, len(free)), baselines=torch.zeros(1, len(free)),
                                             n_samples=samples, perturbations_per_eval=subject.rows_per_forward)
    scores[free] = attr[0].float().cpu().numpy()
    if not np.isfinite(scores).all():
        raise UserError("Kernel SHAP gave non-finite attributions for this input (the model's probabilities are "
                        "degenerate); use method ig or occlusion", param="explain.method")
    return {"scores": scores, "samples": samples, "f_input": base}


def enable_attentions(model) -> None:
    """Switch to the eager attention kernel, the one that can return attention weights."""
    if getattr(model.config, "_attn_implementation", "eager") == "eager":
        return
    try:
        model.set_attn_implementation("eager")
    except (AttributeError, ValueError, NotImplementedError):
        model.config._attn_implementation = "eager"


def attention(subject: Subject) -> dict[str, Any]:
    """Attention maps of every layer and head, and their rollout (heads averaged, residual added,
    rows renormalised, multiplied through the layers). Token score = the rollout row of the last
    token (LM; for a completion, the mean of the rows that predict it) or of the first token ([CLS])."""
    model = subject.model
    cant = (f"{type(model).__name__} cannot return attention weights; use --method ig or --method occlusion")
    try:
        enable_attentions(model)
        with torch.no_grad():
            out = model(input_ids=subject.ids[None], output_attentions=True)
    except (TypeError, ValueError, NotImplementedError) as err:
        raise UserError(f"{cant} ({str(err).splitlines()[0]})", param="explain.method") from None
    maps = getattr(out, "attentions", None)
    if not maps or any(a is None for a in maps):
        raise UserError(cant, param="explain.method")
    att = torch.stack([a[0].float() for a in maps]).cpu().numpy()  # [layers, heads, n, n]
    n = att.shape[-1]
    rollout = np.eye(n)
    for layer in att:
        a = 0.5 * layer.mean(0) + 0.5 * np.eye(n)
        a = a / a.sum(-1, keepdims=True)
        rollout = a @ rollout
    if subject.kind == "classifier":
        row = rollout[0]
    elif subject.target_index is None:  # completion: rows n_shown-1 .. n-2 predict its tokens
        row = rollout[subject.n_shown - 1: n - 1].mean(0)
    else:
        row = rollout[n - 1]
    return {"scores": row[: subject.n_shown].astype(np.float32), "attentions": att, "rollout": rollout}


def run_method(subject: Subject, method: str, steps: int = 50, span: int = 1, internal_batch_size: int = 0,
               samples: int = 0) -> tuple[dict[str, Any], float]:
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; methods: {', '.join(METHODS)}", param="explain.method")
    started = time.perf_counter()
    subject.check_time()
    if method == "ig":
        result = integrated_gradients(subject, steps, internal_batch_size)
    elif method == "occlusion":
        result = occlusion(subject, span)
    elif method == "shap":
        result = kernel_shap(subject, samples)
    else:
        result = attention(subject)
    return result, time.perf_counter() - started


def normalize(scores: np.ndarray, special: list[bool]) -> np.ndarray:
    """Scores divided by the largest |score| among non-special tokens, clipped to [-1, 1]."""
    mask = ~np.array(special, dtype=bool)
    peak = float(np.abs(scores[mask]).max()) if mask.any() else 0.0
    if peak == 0.0:
        return np.zeros_like(scores, dtype=np.float32)
    return np.clip(scores / peak, -1.0, 1.0).astype(np.float32)
