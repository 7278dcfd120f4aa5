"""Preference and reward tuning of the real smollm2-135m (issue 20's must-show).

DPO (`--part dpo`): LoRA DPO on SmolLM2-135M-Instruct over pairs built from ../shared/data/instruct_small
(the 175 Self-Instruct seed tasks, instruction plus input, and the first prompt of each of the 100
OpenAssistant trees, each with its rank-0 reply; prompts of more than 128 tokens in the chat template are
left out, so that a 256-token window keeps the summary and some of the answer; answers are cut to 400
characters at a sentence end). The chosen answer follows a rule the base does not: it opens with a one-line
summary ("In short: " and the answer's first sentence, cut at a word to at most 80 characters), then a blank
line, then the rest of the answer (the sentence is moved up, not repeated); the rejected answer is the answer
as it was. Answers of a single sentence have nothing to summarise and make no pair.
The prompts are shuffled (seed 0): HELD_OUT of them are never trained on nor evaluated on during training
(the rule is checked on all of them; reward accuracy on those that make a pair); the rest that make a pair
go through `data prepare --task preference` with a val split for training's evaluations.
With `--answers base` the answers are the base's own greedy answers to the same prompts (at most
--answer-tokens tokens, cut after their last whole sentence) instead of the dataset's: on-policy pairs, where the
words after the marker are words the base itself would write; `--answers sampled` draws them at temperature 1
instead (the base's distribution, not its mode: training on greedy text sharpens the model). With `--rejected mixed` each answer makes five
pairs, one chosen against each near miss of the rule (no summary line; the summary running on; the marker twice;
the summary alone; an empty summary): the ways earlier runs' tuned answers missed it.
With `--sft-steps N` the usual SFT -> DPO recipe runs: LoRA SFT of the base on the chosen answers (N steps at
--sft-lr), merged; DPO starts from that model and takes it as its reference. `--answers sft` then builds the DPO
pairs from the SFT model's own greedy answers (the SFT stage learns from the dataset's answers).
Measured on the held-out prompts, base against tuned:

- reward accuracy. After: DPO's implicit reward, beta * (log p_tuned - log p_base) of the answer summed
  over its tokens, is higher for the chosen answer than for the rejected one. Before, that reward is 0
  for both answers (policy = reference), so it says nothing; "before" is instead the base's own
  preference: the share of pairs where the base gives the chosen answer a higher summed log-prob.
- the rule followed in greedy answers (chat template, at most --max-new-tokens new tokens): the answer
  starts with "In short:", a summary on that line, then a blank line.
- general-ability perplexity: the check `llmkit compare` ships (eval/general.py: English prose), base
  against tuned (the adapter merged); goal: within 5 %.

    flock /tmp/llmkit-bench.lock nice -n 19 .venv/bin/python bench/preference.py [--part dpo] [--steps 60]
        [--lr 5e-4] [--beta 0.1] [--sft-weight 0] [--answers data|base] [--rejected whole|rest|mixed] [--sft-steps 0]
        [--workdir DIR]

Progress goes to stderr; the last line of stdout is one JSON object of figures, one key per part.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # runs from a checkout without an installed package too

INSTRUCT = ROOT.parent / "shared" / "data" / "instruct_small"
BASE = "smollm2-135m"
MARKER = "In short:"
SUMMARY_CHARS = 80
HELD_OUT = 50
MAX_LENGTH = 256
PROMPT_TOKENS = MAX_LENGTH // 2
ANSWER_CHARS = 400
# The rule, checked on a greedy answer: the marker, a summary on the same line (not the marker again: "In short:
# In short: ..." is no summary; runs before 2026-12-05 05:10 counted it), then a blank line.
RULE = re.compile(rf"^{re.escape(MARKER)}(?![ \t]*{re.escape(MARKER)})[^\n]*\S[^\n]*\n[ \t]*\n")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- shared by the parts: prompts and answers of instruct_small, greedy answers, the general check -----


def instruct_prompts() -> list[dict[str, str]]:
    """[{"prompt", "answer"}]: every seed task (instruction, its input under it) and every OASST tree's
    first prompt with its best-ranked reply, in file order."""
    out = []
    for line in (INSTRUCT / "self_instruct_seed_tasks.jsonl").read_text(encoding="utf-8").splitlines():
        task = json.loads(line)
        instance = task["instances"][0]
        prompt = task["instruction"] + (f"\n\n{instance['input']}" if instance["input"].strip() else "")
        out.append({"prompt": prompt, "answer": instance["output"]})
    for line in (INSTRUCT / "oasst_en_100_tree.jsonl").read_text(encoding="utf-8").splitlines():
        root = json.loads(line)["prompt"]
        replies = sorted((r for r in root["replies"] if r["role"] == "assistant" and r.get("rank") is not None),
                         key=lambda r: r["rank"])
        if replies:
            out.append({"prompt": root["text"], "answer": replies[0]["text"]})
    return [r for r in out if r["prompt"].strip() and r["answer"].strip()]


def greedy_answers(lm, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Each prompt as one user turn in the model's chat template, answered greedily (what `llmkit chat`
    renders; eval.batched decodes a batch at a time)."""
    from llmkit.eval.batched import greedy_replies
    from llmkit.generate import chat_prompt

    rendered, end_ids = [], []
    for p in prompts:
        text, end_ids = chat_prompt(tokenizer, [{"role": "user", "content": p}])
        rendered.append(text)
    return greedy_replies(lm, tokenizer, rendered, max_new_tokens, end_ids, batch_size=10)


def sampled_answers(lm, tokenizer, prompts: list[str], max_new_tokens: int, seed: int = 0) -> list[str]:
    """Each prompt answered by sampling at temperature 1 (no top-k or top-p): text drawn from the model's own
    distribution, so an SFT step on it moves that distribution nowhere on average, while greedy text, its
    mode, sharpens it (and raises perplexity on anything else)."""
    import torch

    from llmkit.generate import chat_prompt, encode_prompt

    torch.manual_seed(seed)
    end_ids = chat_prompt(tokenizer, [{"role": "user", "content": "x"}])[1]  # the template's end-of-turn ids
    eos = sorted({tokenizer.eos_token_id, *end_ids} - {None})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    out = []
    for start in range(0, len(prompts), 10):
        chunk = [encode_prompt(tokenizer, chat_prompt(tokenizer, [{"role": "user", "content": p}])[0]) for p in prompts[start: start + 10]]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(c)) + c for c in chunk])
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk])
        with torch.no_grad():
            generated = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True,
                                    temperature=1.0, top_k=0, top_p=1.0, eos_token_id=eos, pad_token_id=pad)
        for row in generated[:, width:].tolist():
            ended = next((i for i, t in enumerate(row) if t in eos), len(row))
            out.append(tokenizer.decode(row[:ended], skip_special_tokens=True))
    return out


def general_figures(lm, tokenizer) -> dict:
    """`llmkit compare`'s general-ability check: perplexity on English prose, and its short questions."""
    from llmkit.eval.general import general_check

    out = general_check(lm, tokenizer)
    return {"perplexity": out["perplexity"], "answered": out["answered"]}


# -- DPO ------------------------------------------------------------------------------------------------


def opening(answer: str) -> str:
    """The answer cut to at most ANSWER_CHARS, at its last sentence end there (else at a word): the rule is
    about how an answer opens, and OASST's long replies would otherwise fill the window (and the steps' time)."""
    answer = answer.strip()
    if len(answer) <= ANSWER_CHARS:
        return answer
    head = answer[:ANSWER_CHARS]
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)|\n", head)]
    return head[: ends[-1]].strip() if ends and ends[-1] >= ANSWER_CHARS // 2 else head.rsplit(" ", 1)[0].strip()


def summary_first(answer: str) -> str | None:
    """The answer under the rule: its first sentence moved up as a one-line summary after the marker (cut at a
    word to at most SUMMARY_CHARS), a blank line, then the rest of the answer; None for an answer of one
    sentence, which has nothing to summarise. The sentence is moved, not copied: a chosen answer that says its
    first sentence twice teaches the model to repeat lines (the first runs' greedy answers looped on it)."""
    answer = answer.strip()
    first = answer.split("\n", 1)[0].strip()
    end = re.compile(r"(?<=[.!?])\s").search(first, 20)  # a sentence end past a "1. " or "I. " heading
    first = first[: end.start()] if end else first
    rest = answer[len(first):].strip()
    if not rest:
        return None
    if len(first) > SUMMARY_CHARS:
        head = first[: SUMMARY_CHARS].rsplit(" ", 1)[0].rstrip(",;:")
        first, rest = head + "...", "..." + first[len(head):].lstrip(",;: ") + ("\n\n" if rest[:1] == "\n" else " ") + rest
    return f"{MARKER} {first}\n\n{rest}"


def pair(answer: str, rejected: str, seed: int = 0) -> dict:
    """{"chosen", "rejected"} from one answer; chosen None when the answer makes no pair. The rejected answer is
    the answer as it was (`whole`), or the chosen one without its summary line (`rest`): then the two differ by
    the summary line alone, and the words that open the summary are not also the words DPO pushes down where
    the rejected answer opens. Two more kinds are the ways DPO stages missed the rule in earlier runs: the chosen
    answer with its marker written twice (`doubled`) or its summary line alone (`alone`). Kinds joined with "+"
    take turns by the seed the answer was sampled with (`whole+doubled`: odd seeds' answers are rejected doubled).
    (`mixed` makes several pairs per answer: see `pairs`.)"""
    whole = opening(answer)
    chosen = summary_first(whole)
    kinds = rejected.split("+")
    kind = kinds[seed % len(kinds)]
    if chosen is None or kind == "whole":
        return {"chosen": chosen, "rejected": whole}
    return {"chosen": chosen, "rejected": near_misses(chosen)[kind]}


def near_misses(chosen: str) -> dict[str, str]:
    """Rejected answers one step from the chosen one, each the way tuned models missed the rule in earlier runs:
    no summary line (`rest`), the summary running on into the answer on one line, the marker written twice, the
    summary alone with nothing after it, and the blank line straight after the marker (an empty summary). Each
    pair differs from its chosen answer only where the rule is broken, so DPO's push lands on those tokens and
    not on the whole answer."""
    summary, rest = chosen.split("\n\n", 1)
    return {"rest": rest, "run-on": f"{summary} {rest}", "doubled": f"{MARKER} {chosen}", "alone": summary,
            "empty": f"{MARKER}\n\n{summary[len(MARKER):].strip()} {rest}"}


def pairs_for(prompt: str, answer: str, rejected: str, seed: int = 0) -> list[dict]:
    """The training pairs of one prompt (none when its answer makes no pair); one record with chosen None for
    an answer that makes none, so held-out prompts keep their place."""
    if rejected != "mixed":
        return [{"prompt": prompt, **pair(answer, rejected, seed)}]
    chosen = summary_first(opening(answer))
    if chosen is None:
        return [{"prompt": prompt, "chosen": None, "rejected": None}]
    return [{"prompt": prompt, "chosen": chosen, "rejected": r} for r in near_misses(chosen).values()]


def base_answered(lm, tokenizer, rows: list[dict], tokens: int, cache: Path, sample: bool = False, seed: int = 0) -> list[dict]:
    """The rows with the base's own answer (greedy, or sampled with `seed`; whole sentences) as their answer; kept in `cache` (the prompts
    and token limit it was made for), so a second run on the same workdir does not generate them again."""
    prompts = [r["prompt"] for r in rows]
    kept = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()] if cache.exists() else []
    if [k["prompt"] for k in kept] == prompts:
        generated = [k["answer"] for k in kept]
        say(f"the base's answers to {len(rows)} prompts from {cache}")
    else:
        started = time.perf_counter()
        generated = (sampled_answers(lm, tokenizer, prompts, tokens, seed) if sample
                     else greedy_answers(lm, tokenizer, prompts, tokens))
        cache.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(prompts, generated, strict=True)),
                         encoding="utf-8")
        say(f"the base answered {len(rows)} prompts in {time.perf_counter() - started:.0f} s")
    return [r | {"answer": whole_sentences(a)} for r, a in zip(rows, generated, strict=True) if a.strip()]


def whole_sentences(text: str) -> str:
    """A generated answer cut after its last sentence end: the token limit may stop it mid-sentence."""
    text = text.strip()
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)|\n", text)]
    return text[: ends[-1]].strip() if ends else text


def prompt_tokens(tokenizer, prompt: str) -> int:
    """Tokens of the prompt as one user turn in the chat template, generation prompt included."""
    from llmkit.generate import chat_prompt, encode_prompt

    return len(encode_prompt(tokenizer, chat_prompt(tokenizer, [{"role": "user", "content": prompt}])[0]))


def follows_rule(answer: str) -> bool:
    return RULE.match(answer.lstrip()) is not None


def pair_logps(lm, tokenizer, pairs: list[dict]) -> list[tuple[float, float]]:
    """(summed log-prob of the chosen answer, of the rejected one) per pair, rendered and cut to MAX_LENGTH
    tokens exactly as `train dpo` renders them."""
    import torch

    from llmkit.train.preference import encode_records
    from llmkit.train.preference_loss import completion_logps, pack_sequences

    records = [{"prompt": [{"role": "user", "content": p["prompt"]}], "chosen": p["chosen"], "rejected": p["rejected"]}
               for p in pairs]
    examples, counts = encode_records(tokenizer, records, "dpo", MAX_LENGTH, False, "held-out pairs")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    with torch.no_grad():
        for k in range(0, len(examples), 4):
            chunk = examples[k: k + 4]
            answers = [e.chosen for e in chunk] + [e.rejected for e in chunk]
            summed = completion_logps(lm, pack_sequences([a.prompt for a in answers], [a.answer for a in answers], pad),
                                      whole=False).summed.tolist()
            out += list(zip(summed[: len(chunk)], summed[len(chunk):], strict=True))
    return out


def sft_stage(ws, registry, trained: list[dict], args) -> str:
    """The usual SFT -> DPO recipe's first stage: LoRA SFT of the base on the chosen answers of the training
    pairs (one per prompt), merged into a standalone model; DPO then starts from it and takes it as its
    reference. Returns the merged model's registry ref."""
    from rich.console import Console

    from llmkit.config import DataConfig, LoraConfig, SftConfig
    from llmkit.data import prepare
    from llmkit.train.lora import merge
    from llmkit.train.supervised import sft

    chosen = list(dict.fromkeys((p["prompt"], p["chosen"]) for p in trained))  # mixed pairs share their chosen answer
    source = ws.root / "summary_first_chat.jsonl"
    source.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
                              for q, a in chosen), encoding="utf-8")
    ds = prepare(DataConfig(inputs=[str(source)], name="summary-first-chat", task="chat", tokenizer="char",
                            splits={"val": 0.1, "test": 0.0}), ws, registry)
    lora = LoraConfig(r=args.lora_r, alpha=2 * args.lora_r, target_modules=args.lora_targets.split(","))
    cfg = SftConfig(base=BASE, data=ds.ref, name="smollm2-summary-sft", method="lora", lora=lora, lr=args.sft_lr,
                    max_steps=args.sft_steps, batch_size=4, max_length=MAX_LENGTH, eval_every=args.sft_steps,
                    checkpoint_every=args.sft_steps, seed=1337)
    adapter = sft(cfg, ws, registry, Console(stderr=True))
    say(f"SFT stage: {len(chosen)} chosen answers, {args.sft_steps} steps at lr {args.sft_lr}")
    return merge(adapter.ref, ws, registry).ref


def split_pairs(rows: list[dict], args) -> tuple[list[dict], list[dict], list[dict]]:
    """(one record per held-out prompt, training pairs, held-out pairs built as training's are). Held-out prompts
    are any prompts (the rule is checked on greedy answers); pairs only come from answers of more than one
    sentence, where a summary line says something the rest does not repeat."""
    per_prompt = [pairs_for(r["prompt"], r["answer"], args.rejected) for r in rows]
    held = [ps[0] for ps in per_prompt[: args.held_out]]
    trained = [p for ps in per_prompt[args.held_out:] for p in ps if p["chosen"] is not None]
    held_pairs = [p for ps in per_prompt[: args.held_out] for p in ps if p["chosen"] is not None]
    return held, trained, held_pairs


def dpo_part(ws_root: Path, args) -> dict:
    from rich.console import Console

    from llmkit.config import DataConfig, DpoConfig, LoraConfig
    from llmkit.data import prepare
    from llmkit.models.io import load_causal_lm, load_tokenizer_for, resolve_model
    from llmkit.registry import Registry
    from llmkit.train.preference import preference_tune
    from llmkit.workspace import Workspace

    ws = Workspace.open(ws_root)
    registry = Registry.for_workspace(ws.root)
    base = resolve_model(BASE, registry)
    tokenizer = load_tokenizer_for(base)
    # A prompt longer than half the window leaves little of the answer after the summary: not used.
    rows = [r for r in instruct_prompts() if prompt_tokens(tokenizer, r["prompt"]) <= PROMPT_TOKENS]
    random.Random(0).shuffle(rows)
    base_lm, tokenizer = load_causal_lm(base)
    if args.answers == "base":  # on-policy: the base's own greedy answers, whole sentences, stand for the dataset's
        rows = base_answered(base_lm, tokenizer, rows, args.answer_tokens, ws_root / f"base_answers_{args.answer_tokens}.jsonl")
    elif args.answers == "sampled":  # on-policy and from the base's distribution, not its mode
        rows = base_answered(base_lm, tokenizer, rows, args.answer_tokens, ws_root / f"sampled_answers_{args.answer_tokens}.jsonl",
                             sample=True)
    held, trained, held_pairs = split_pairs(rows, args)
    for seed in range(1, args.samples):  # more sampled answers to each training prompt: more text, fewer epochs
        more = base_answered(base_lm, tokenizer, rows[args.held_out:], args.answer_tokens,
                             ws_root / f"sampled_answers_{args.answer_tokens}_seed{seed}.jsonl", sample=True, seed=seed)
        trained += [p for r in more for p in pairs_for(r["prompt"], r["answer"], args.rejected, seed) if p["chosen"] is not None]
    prompts = [p["prompt"] for p in held]
    base_answers = greedy_answers(base_lm, tokenizer, prompts, args.max_new_tokens)
    base_general = general_figures(base_lm, tokenizer)

    dpo_base, sft_figures, sft_lm = BASE, {}, None
    if args.sft_steps or args.sft_from:  # SFT -> DPO: DPO starts from (and is referenced to) the SFT model
        dpo_base = args.sft_from or sft_stage(ws, registry, trained, args)
        sft_lm, _ = load_causal_lm(resolve_model(dpo_base, registry))
        if args.answers == "sft":  # on-policy for DPO's start: the SFT model's own greedy answers make the pairs
            rows = base_answered(sft_lm, tokenizer, rows, args.answer_tokens,
                                 ws_root / f"sft_answers_{args.answer_tokens}_{args.sft_steps}_{args.sft_lr:g}.jsonl")
            held, trained, held_pairs = split_pairs(rows, args)
            if [p["prompt"] for p in held] != prompts:
                sys.exit("bench/preference.py: the SFT model left a held-out prompt unanswered; the held-out set moved")
    if not held_pairs:  # answers of one sentence make no pair: every held-out ratio below would divide by zero
        sys.exit("bench/preference.py: no held-out prompt makes a pair (single-sentence answers make none); "
                 "raise --held-out or --answer-tokens")
    source = ws_root / "summary_first_pairs.jsonl"
    source.write_text("".join(json.dumps(p) + "\n" for p in trained), encoding="utf-8")
    ds = prepare(DataConfig(inputs=[str(source)], name="summary-first", task="preference", tokenizer="char",
                            splits={"val": 0.1, "test": 0.0}), ws, registry)
    say(f"{len(trained)} pairs to {ds.ref} (train and val), {len(held)} held-out prompts, {len(held_pairs)} held-out pairs")
    base_logps = pair_logps(base_lm, tokenizer, held_pairs)
    say(f"base: prefers chosen in {sum(c > r for c, r in base_logps)}/{len(held_pairs)}, rule in "
        f"{sum(map(follows_rule, base_answers))}/{len(held)}, general perplexity {base_general['perplexity']:.3f}")
    del base_lm

    ref_logps, sft_answers = base_logps, [None] * len(prompts)
    if sft_lm is not None:
        ref_logps = pair_logps(sft_lm, tokenizer, held_pairs)
        sft_answers = greedy_answers(sft_lm, tokenizer, prompts, args.max_new_tokens)
        sft_general = general_figures(sft_lm, tokenizer)
        del sft_lm
        sft_figures = {"sft_steps": args.sft_steps, "sft_lr": args.sft_lr, "sft_from": args.sft_from,
                       "rule_followed_sft": round(sum(map(follows_rule, sft_answers)) / len(held), 4),
                       "sft_prefers_chosen": round(sum(c > r for c, r in ref_logps) / len(held_pairs), 4),
                       "general_ppl_sft": round(sft_general["perplexity"], 4),
                       "general_ppl_change_sft": round(sft_general["perplexity"] / base_general["perplexity"] - 1, 4)}
        say(f"SFT model: prefers chosen in {sum(c > r for c, r in ref_logps)}/{len(held_pairs)}, rule in "
            f"{sft_figures['rule_followed_sft']:.0%}, general perplexity {sft_general['perplexity']:.3f} "
            f"({sft_figures['general_ppl_change_sft']:+.2%})")

    lora = LoraConfig(r=args.lora_r, alpha=2 * args.lora_r, target_modules=args.lora_targets.split(","))
    cfg = DpoConfig(base=dpo_base, data=ds.ref, name="smollm2-summary-dpo", method="lora", lora=lora, lr=args.lr, beta=args.beta,
                    sft_weight=args.sft_weight, max_steps=args.steps, batch_size=4, max_length=MAX_LENGTH,
                    eval_every=args.steps, checkpoint_every=args.steps, seed=1337)
    started = time.perf_counter()
    tuned = preference_tune(cfg, "dpo", ws, registry, Console(stderr=True))
    tune_seconds = time.perf_counter() - started  # the loop's own time plus loading and the reference's log-probs
    summary = tuned.lineage["metrics"]

    tuned_lm, tokenizer = load_causal_lm(tuned)  # the adapter merged into the base's weights
    tuned_logps = pair_logps(tuned_lm, tokenizer, held_pairs)
    # DPO's implicit reward of an answer: beta * (log p_tuned - log p_ref); the pair counts when chosen's is higher.
    # The reference is DPO's own: the base, or the SFT model under --sft-steps.
    wins = [(tc - rc) > (tr - rr) for (tc, tr), (rc, rr) in zip(tuned_logps, ref_logps, strict=True)]
    tuned_answers = greedy_answers(tuned_lm, tokenizer, prompts, args.max_new_tokens)
    tuned_general = general_figures(tuned_lm, tokenizer)

    (ws_root / "held_out_answers.jsonl").write_text("".join(  # every greedy answer, to read beside the figures
        json.dumps({"prompt": p, "base": b, "tuned": t, "rule_base": follows_rule(b), "rule_tuned": follows_rule(t),
                    **({"sft": f, "rule_sft": follows_rule(f)} if f is not None else {})}) + "\n"
        for p, b, t, f in zip(prompts, base_answers, tuned_answers, sft_answers, strict=True)), encoding="utf-8")
    before, after = sum(c > r for c, r in base_logps) / len(held_pairs), sum(wins) / len(held_pairs)
    rule_before, rule_after = (sum(map(follows_rule, a)) / len(held) for a in (base_answers, tuned_answers))
    change = tuned_general["perplexity"] / base_general["perplexity"] - 1
    say(f"tuned: reward accuracy {after:.3f}, rule in {rule_after:.0%}, general perplexity "
        f"{tuned_general['perplexity']:.3f} ({change:+.2%})")
    for prompt, b, t in list(zip(prompts, base_answers, tuned_answers, strict=True))[:3]:
        say(f"prompt: {prompt[:80]!r}\n  base:  {b[:160]!r}\n  tuned: {t[:160]!r}")
    return {
        "model": BASE, "method": "lora", "answers": args.answers, "rejected": args.rejected, "lora_r": args.lora_r, "lora_targets": args.lora_targets, "lr": args.lr, "beta": args.beta,
        "sft_weight": args.sft_weight, "batch_size": 4, "answers_per_prompt": args.samples, **sft_figures,
        "max_length": MAX_LENGTH, "train_pairs": summary.get("train_examples"), "held_out_prompts": len(held), "held_out_pairs": len(held_pairs),
        "max_new_tokens": args.max_new_tokens,
        "reward_accuracy_before": round(before, 4), "reward_accuracy_after": round(after, 4),
        "reward_accuracy_definition": "after: held-out pairs whose chosen answer gets the higher DPO implicit reward "
                                      "beta*(logp_tuned - logp_base), summed log-probs; before: held-out pairs whose "
                                      "chosen answer the base gives the higher summed log-prob (the implicit reward "
                                      "is 0 for both answers before training)",
        "rule_followed_before": round(rule_before, 4), "rule_followed_after": round(rule_after, 4),
        "rule": f"the greedy answer opens with '{MARKER}', a summary on that line, then a blank line",
        "general_ppl_base": round(base_general["perplexity"], 4), "general_ppl_tuned": round(tuned_general["perplexity"], 4),
        "general_ppl_change": round(change, 4),
        "general_answered_base": round(base_general["answered"], 4), "general_answered_tuned": round(tuned_general["answered"], 4),
        "val_reward_accuracy": summary.get("val_reward_accuracy"), "val_reward_margin": summary.get("val_reward_margin"),
        "steps": summary.get("steps", args.steps), "seconds": round(summary["seconds"], 1),
        "tune_seconds": round(tune_seconds, 1),
        "samples": [{"prompt": p, "base": b, "tuned": t} for p, b, t in zip(prompts[:3], base_answers, tuned_answers, strict=False)],
        "goals_met": {"reward_accuracy_after_ge_0.9": after >= 0.9, "rule_followed_after_ge_0.8": rule_after >= 0.8,
                      "general_ppl_within_5pct": abs(change) <= 0.05},
    }


def grpo_part(ws_root: Path, args) -> dict:
    """LoRA GRPO on two-digit arithmetic word problems (bench/preference_grpo.py, which also runs alone)."""
    sys.path.insert(0, str(ROOT))
    from bench.preference_grpo import run

    return run(ws_root, args.grpo_minutes, args.grpo_steps, args.grpo_lr, 8, 4, 32, 0.04, 0.7,
               "bench.preference_grpo:shaped_reward")


# Each part: (workspace root, parsed arguments) -> its figures.
PARTS = {"dpo": dpo_part, "grpo": grpo_part}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=[*PARTS, "all"], default="all", help="which part to run (all: every part in turn)")
    ap.add_argument("--workdir", type=Path, help="keep the workspace here (default: a temporary folder, removed after)")
    ap.add_argument("--steps", type=int, default=60, help="DPO optimizer steps (4 pairs each)")
    ap.add_argument("--lr", type=float, default=5e-4, help="DPO peak learning rate")
    ap.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    ap.add_argument("--sft-weight", type=float, default=0.0, help="DPO: weight of the next-token loss on chosen answers (RPO)")
    ap.add_argument("--sft-steps", type=int, default=0,
                    help="DPO: LoRA SFT steps on the chosen answers first, merged; DPO starts from that model (0: from the base)")
    ap.add_argument("--sft-from", help="DPO: start from this model of the workdir's registry (an earlier run's SFT stage "
                                       "on the same answers) instead of training one; measured again all the same")
    ap.add_argument("--sft-lr", type=float, default=2e-4, help="DPO --sft-steps: the SFT stage's peak learning rate")
    ap.add_argument("--grpo-minutes", type=float, default=30.0, help="GRPO training time budget (the issue's: 30)")
    ap.add_argument("--grpo-steps", type=int, default=80, help="GRPO steps of the lr schedule (the budget may end it sooner)")
    ap.add_argument("--grpo-lr", type=float, default=3e-4, help="GRPO peak learning rate")
    ap.add_argument("--answers", choices=["data", "base", "sampled", "sft"], default="data",
                    help="DPO answers: the dataset's (data), the base's own greedy ones (base: on-policy pairs), or with "
                         "--sft-steps the SFT model's (sft: SFT on the dataset's, DPO on pairs of the SFT model's own answers), "
                         "or the base's sampled at temperature 1 (sampled)")
    ap.add_argument("--rejected", default="whole",
                    help="DPO rejected answer: the answer as it was, the chosen one without its summary line, or "
                         "mixed: five pairs per answer, one per way of missing the rule (see near_misses); also doubled (the "
                         "marker twice) and alone (the summary line alone); kinds joined by + take turns by sample seed")
    ap.add_argument("--samples", type=int, default=1,
                    help="DPO --answers sampled: answers sampled per training prompt (seeds 0..N-1; held-out prompts use seed 0's)")
    ap.add_argument("--answer-tokens", type=int, default=96, help="DPO --answers base: most new tokens of a base answer")
    ap.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha is twice it)")
    ap.add_argument("--lora-targets", default="all-linear", help="DPO: modules to adapt, comma-separated (e.g. q_proj,v_proj)")
    ap.add_argument("--held-out", type=int, default=HELD_OUT, help="prompts never trained on, answered and scored")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="most new tokens of a greedy held-out answer")
    args = ap.parse_args()
    if args.steps < 1 or args.held_out < 1:
        sys.exit("bench/preference.py: --steps and --held-out must be at least 1")
    if args.samples < 1 or (args.samples > 1 and args.answers != "sampled"):
        sys.exit("bench/preference.py: --samples N (at least 1) goes with --answers sampled")
    kinds = args.rejected.split("+")
    if args.rejected != "mixed" and not set(kinds) <= {"whole", "rest", "doubled", "alone"}:
        sys.exit(f"bench/preference.py: --rejected {args.rejected}: use mixed, or whole, rest, doubled, alone joined by +")
    if len(kinds) > args.samples:
        sys.exit(f"bench/preference.py: --rejected {args.rejected} takes turns over --samples: needs --samples {len(kinds)} or more")
    if args.answers == "sft" and args.sft_steps < 1:
        sys.exit("bench/preference.py: --answers sft needs an SFT stage: add --sft-steps N")
    parts = list(PARTS) if args.part == "all" else [args.part]
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            root = (args.workdir or Path(tmp)) / part
            root.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            say(f"part {part} in {root}")
            figures[part] = PARTS[part](root, args)
            say(f"part {part} done in {time.perf_counter() - started:.0f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
