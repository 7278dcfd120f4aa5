"""GRPO half of bench/preference.py: LoRA GRPO on smollm2-135m for two-digit arithmetic word problems.

Problems are generated here (seeded): addition and subtraction of two-digit numbers in one-sentence stories
("Mia has 34 shells and gets 27 more. How many shells does Mia have?"), the exact
result as the reference answer. Held-out figure: llmkit's built-in `number` reward (the answer's last number equals the
result) on greedy answers. Training reward: `shaped_reward` below, through `--reward module:function`.
HELD_OUT problems are never trained on; exact match of greedy answers on them, base against tuned, is
the figure (goal: +15 points within the time budget, 30 minutes on 2 cores). The run's reward and KL
curves are saved in its folder (plots/rewards.png), and their path is in the JSON.

Run alone:  flock /tmp/llmkit-bench.lock nice -n 19 .venv/bin/python bench/preference_grpo.py [--minutes 30]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

BASE = "smollm2-135m"
HELD_OUT = 100
NAMES = ["Mia", "Tom", "Ana", "Leo", "Sara", "Ben", "Nora", "Omar", "Lily", "Sam"]
ITEMS = ["apples", "shells", "stickers", "marbles", "books", "coins", "cards", "pencils"]
STORIES = [
    ("{n} has {a} {i} and gets {b} more. How many {i} does {n} have?", lambda a, b: a + b),
    ("A box holds {a} {i} and another holds {b}. How many {i} are there in all?", lambda a, b: a + b),
    ("{n} had {a} {i} and gave {b} away. How many {i} are left?", lambda a, b: a - b),
    ("There were {a} {i} on a shelf. {n} took {b}. How many {i} are on the shelf now?", lambda a, b: a - b),
]
INSTRUCTION = ""  # asking for "only the number" lowers the base's hit rate (0 of 100 here): none


def shaped_reward(prompt: str, completion: str, record: dict) -> float:
    """The training reward (`--reward bench.preference_grpo:shaped_reward`, a user function as a user would write
    one): 1 when the answer's last number is the result (the built-in `number`, what the held-out figure counts),
    0.25 when the result appears earlier in the answer but something follows it, else 0. The base often works the
    sum out and then rambles on to another number; the partial credit makes that common near-miss a signal
    (with the exact reward alone, 1 answer in 30 scores and most groups carry no signal)."""
    import re

    from llmkit.train.rewards import number_reward, reference_answer

    if number_reward(prompt, completion, record):
        return 1.0
    want = reference_answer(record).strip()
    return 0.25 if re.search(rf"(?<![\d.]){re.escape(want)}(?![\d])", completion) else 0.0


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def problems(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        story, op = rng.choice(STORIES)
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if op(5, 3) == 2 and a < b:  # subtraction: never below zero
            a, b = b, a
        name = rng.choice(NAMES)
        text = story.format(n=name, a=a, b=b, i=rng.choice(ITEMS))
        out.append({"messages": [{"role": "user", "content": text + INSTRUCTION},
                                 {"role": "assistant", "content": str(op(a, b))}]})
    return out


def exact_match(model_ref: str, held_out: list[dict], ws, registry, max_new_tokens: int) -> tuple[float, list[str]]:
    """Share of held-out problems whose greedy answer's last number is the result (the `number` reward)."""
    import torch

    from llmkit.models.io import load_causal_lm, resolve_model
    from llmkit.runtime.decoder import eos_set, get_decoder
    from llmkit.train.rewards import number_reward
    from llmkit.train.rollouts import decode_groups

    lm, tok = load_causal_lm(resolve_model(model_ref, registry))  # an adapter loads merged
    lm.eval()
    eos = eos_set(tok.eos_token_id) | {tok.convert_tokens_to_ids("<|im_end|>")}
    prompts = []
    for rec in held_out:
        ids = tok.apply_chat_template(rec["messages"][:1], tokenize=True, add_generation_prompt=True)
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    with torch.inference_mode():  # greedy, every problem stepped together on the fast decoder (as GRPO samples)
        outs = decode_groups(get_decoder(lm), prompts, 1, max_new_tokens, 0.0, eos)
    answers = tok.batch_decode([[t for t in out if t not in eos] for out in outs], skip_special_tokens=True)
    hits = sum(number_reward("", text, rec) == 1.0 for text, rec in zip(answers, held_out, strict=True))
    return hits / len(held_out), answers


def run(workdir: Path, minutes: float, steps: int, lr: float, group: int, batch: int, max_new_tokens: int,
        beta: float, temperature: float, reward: str) -> dict:
    from rich.console import Console

    from llmkit.config import DataConfig, GrpoConfig, LoraConfig
    from llmkit.data import prepare
    from llmkit.registry import Registry
    from llmkit.train.grpo import grpo
    from llmkit.workspace import Workspace

    ws = Workspace.open(workdir)
    registry = Registry.for_workspace(ws.root)
    held_out = problems(HELD_OUT, seed=1)
    file = workdir / "arithmetic.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in problems(600, seed=0)))
    prepare(DataConfig(inputs=[str(file)], name="arithmetic", task="chat", tokenizer="char",
                       splits={"val": 0.05, "test": 0.0}), ws, registry)
    say("base: exact match on the held-out problems")
    before, base_answers = exact_match(BASE, held_out, ws, registry, max_new_tokens)
    say(f"base exact match {before:.3f}; e.g. {base_answers[:3]}")
    started = time.time()
    cfg = GrpoConfig(base=BASE, data="arithmetic", reward=reward, max_steps=steps, batch_size=batch, group_size=group,
                     max_new_tokens=max_new_tokens, max_length=160, lr=lr, beta=beta, temperature=temperature, eval_every=max(steps // 4, 1),
                     eval_max_examples=24, checkpoint_every=10_000, warmup_ratio=0.05, name="smollm2-arith-grpo",
                     lora=LoraConfig(r=16, alpha=32), max_minutes=minutes)
    model = grpo(cfg, ws, registry, console=Console(stderr=True))
    seconds = time.time() - started
    say("tuned: exact match on the held-out problems")
    after, tuned_answers = exact_match(model.ref, held_out, ws, registry, max_new_tokens)
    say(f"tuned exact match {after:.3f}; e.g. {tuned_answers[:3]}")
    summary = model.lineage["metrics"]
    run_dir = Path(model.lineage["run"]["path"])
    return {"exact_match_before": round(before, 3), "exact_match_after": round(after, 3),
            "points_gained": round(100 * (after - before), 1), "steps": summary["steps"],
            "training_minutes": round(seconds / 60, 1), "budget_minutes": minutes,
            "val_reward_before": summary["val_reward_before"], "val_reward_after": summary["val_reward"],
            "train_reward": reward, "group_size": group, "prompts_per_step": batch, "lr": lr, "beta": beta, "temperature": temperature,
            "curves": str(run_dir / "plots" / "rewards.png"),
            "goals_met": {"plus_15_points_within_budget": after - before >= 0.15 and seconds / 60 <= minutes + 2}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="training time budget (the issue's: 30)")
    ap.add_argument("--steps", type=int, default=80, help="steps of the lr schedule (the budget may end it sooner)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--reward", default="bench.preference_grpo:shaped_reward",
                    help="training reward (number: the strict one the held-out figure counts)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="llmkit-bench-grpo-"))
    figures = run(workdir, args.minutes, args.steps, args.lr, args.group, args.batch, args.max_new_tokens, args.beta,
                  args.temperature, args.reward)
    print(json.dumps({"grpo": figures}))


if __name__ == "__main__":
    main()
