"""Answers sampled from the policy while it trains (GRPO's groups), on the fast decoder.

Token ids in, token ids out. On the fast path with LoRA the frozen base lives once more as a FastLlama
(fused projections, KV cache) and the policy's current adapters are handed to it before every round as
per-row LoRA (runtime.lora_rows), so sampling runs at serving speed without merging anything. Other
cases decode through the policy itself: our Llama under full tuning as a FastLlama rebuilt from its
current weights, an HF/peft module through HFDecoder's KV cache.

A prompt is prefilled once and its cache copied to each of its group's rows (FastLlama); rows that
reach an end-of-turn token leave the batch.
"""

from __future__ import annotations

import torch

from llmkit.models.io import Model, load_causal_lm
from llmkit.runtime.decoder import HFDecoder
from llmkit.runtime.fast_llama import FastLlama, decode_unsupported_reason
from llmkit.runtime.lora_rows import AdapterSet, adapter_layout

POLICY = 1  # the adapter id the policy's rows decode with


class Sampler:
    def __init__(self, policy: torch.nn.Module, base: Model, path: str, method: str, lora_scale: float):
        self.policy, self.path, self.method, self.scale = policy, path, method, lora_scale
        self.base_hf = None
        if path == "fast" and method == "lora":
            self.base_hf = load_causal_lm(base)[0].float().eval()
            self.fast = FastLlama(self.base_hf)

    def _decoder(self) -> tuple[FastLlama | HFDecoder, int]:
        """The decoder that samples from the policy as it is now, and the adapter id its rows use."""
        if self.base_hf is not None:
            layout = adapter_layout(self.policy.adapter_state(), self.scale, self.base_hf, self.fast.dtype, "policy",
                                    "the policy's adapters")
            self.fast.adapters = AdapterSet.of({POLICY: layout})
            return self.fast, POLICY
        if self.path == "fast":  # full tuning of our Llama: its current weights in FastLlama's layout
            hf = self.policy.to_hf().float().eval()
            return (FastLlama(hf) if not decode_unsupported_reason(hf) else HFDecoder(hf)), 0
        return HFDecoder(self.policy), 0

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], n: int, max_new_tokens: int, temperature: float,
               eos: set[int]) -> list[list[int]]:
        """n answers per prompt (prompt-major: prompt 0's n answers first), each ending at an eos id or after
        max_new_tokens. temperature 0 is greedy."""
        was_training = self.policy.training
        self.policy.eval()
        try:
            return self._sample(prompts, n, max_new_tokens, temperature, eos)
        finally:
            self.policy.train(was_training)

    def _sample(self, prompts, n, max_new_tokens, temperature, eos) -> list[list[int]]:
        decoder, adapter = self._decoder()
        return decode_groups(decoder, prompts, n, max_new_tokens, temperature, eos, adapter)


@torch.no_grad()
def decode_groups(decoder: FastLlama | HFDecoder, prompts: list[list[int]], n: int, max_new_tokens: int,
                  temperature: float, eos: set[int], adapter: int = 0) -> list[list[int]]:
    """n answers per prompt from `decoder`, all rows stepped together (see Sampler.sample)."""
    if isinstance(decoder, FastLlama):
        # One KV pool for every row, so each step attends for the whole batch in one call per layer; the prompts
        # are prefilled together, each into its group's first slot, and that slot copied to the rest of the group.
        capacity = max(len(ids) for ids in prompts) + max_new_tokens
        pool = decoder.new_pool(len(prompts) * n, capacity)
        states = [decoder.pool_state(pool, slot) for slot in range(len(prompts) * n)]
        for state in states:
            state.adapter = adapter
        firsts = states[::n]
        prompt_logits = decoder.prefill_many(prompts, firsts)           # (P, V)
        for k, first in enumerate(firsts):
            for j in range(1, n):
                pool[:, :, k * n + j] = pool[:, :, k * n]
                states[k * n + j].length = first.length
        last = [prompt_logits[k // n] for k in range(len(states))]
    else:
        states, last = [], []
        for ids in prompts:
            for _ in range(n):
                state, logits = decoder.prefill(ids, capacity=len(ids) + max_new_tokens)
                states.append(state)
                last.append(logits)
    logits = torch.stack(last)                               # (rows, V)
    out: list[list[int]] = [[] for _ in states]
    live = list(range(len(states)))
    for t in range(max_new_tokens):
        picks = _pick(logits, temperature)
        still = []
        for row, token in zip(live, picks, strict=True):
            out[row].append(token)
            if token not in eos:
                still.append(row)
        if not still or t == max_new_tokens - 1:
            break
        logits = decoder.step([states[r] for r in still], [out[r][-1] for r in still])
        live = still
    return out


def _pick(logits: torch.Tensor, temperature: float) -> list[int]:
    if temperature == 0:
        return logits.argmax(-1).tolist()
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1).squeeze(1).tolist()
