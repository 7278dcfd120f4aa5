"""The promotion gate's greedy replies (`llmkit compare`, eval's generation metrics): the runtime's batched
FastLlama decoding (eval.batched, llmkit's side) against HF's batched `generate` on the same model, prompts,
token budget and threads, in one process.

Prompts: the general check's instructions (llmkit/eval/general/instructions.jsonl), each a user turn under
smollm2-135m's chat template, --new-tokens greedy tokens at most, all in one batch as the gate sends them.
The sides alternate over --rounds rounds after one untimed round each; the figure is each side's median.
Both must give the same tokens (the rows that differ are counted). Peak memory is not compared here:
FastLlama keeps its own copy of the weights in its layout (read `llmkit compare`'s wall time and peak RSS
in docs/benchmarks.md for the whole command).

    .venv/bin/python bench/gate_replies.py [--threads 2] [--rounds 3] [--new-tokens 64]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from llmkit.eval import batched
    from llmkit.eval.general import general_instructions
    from llmkit.generate import chat_prompt
    from llmkit.models.io import load_causal_lm, resolve_model

    lm, tok = load_causal_lm(resolve_model("smollm2-135m"))
    prompts, end = [], []
    for item in general_instructions():
        prompt, end = chat_prompt(tok, [{"role": "user", "content": item["instruction"]}])
        prompts.append(prompt)
    max_len = lm.config.max_position_embeddings
    rows = [batched.fit_context(batched.encode_prompt(tok, p), args.new_tokens, max_len, tok.bos_token_id) for p in prompts]
    eos = batched.eos_set(tok.eos_token_id) | batched.eos_set(lm.config.eos_token_id) | set(end)
    sides = {"llmkit": lambda: batched._on_fast_decoder(lm, rows, eos),
             "hf_generate": lambda: batched._on_hf_generate(lm, tok, rows, eos)}
    replies = {name: run() for name, run in sides.items()}  # untimed: FastLlama's layout, HF's first call
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, run in sides.items():
            start = time.perf_counter()
            replies[name] = run()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    tokens = sum(len(r) for r in replies["llmkit"])
    differ = sum(a != b for a, b in zip(replies["llmkit"], replies["hf_generate"], strict=True))
    for name in sides:
        print(f"{name:12s} {median[name]:7.2f} s  {tokens / median[name]:7.1f} tokens/s  (rounds: "
              f"{', '.join(f'{s:.2f}' for s in seconds[name])})")
    print(f"{len(prompts)} prompts, {tokens} tokens; rows that differ: {differ}")
    print(json.dumps({"prompts": len(prompts), "tokens": tokens, "llmkit_s": round(median["llmkit"], 3),
                      "hf_generate_s": round(median["hf_generate"], 3),
                      "time_ratio": round(median["llmkit"] / median["hf_generate"], 3), "rows_that_differ": differ,
                      "threads": args.threads}))


if __name__ == "__main__":
    main()
