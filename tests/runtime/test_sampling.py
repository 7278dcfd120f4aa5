"""llmkit.runtime.sampling: the same distributions as Hugging Face's processors, and batched draws equal to one by one."""

from __future__ import annotations

import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmkit.runtime.sampling import Sampler


def test_sampling_processors_match_hf():
    torch.manual_seed(0)
    logits = torch.randn(50) * 3
    prompt = [3, 7, 7, 20]
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt]), logits[None].clone())
    ref = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(10)(None, ref / 0.7))[0]
    want = ref.softmax(-1)
    draws = Sampler(50, prompt, temperature=0.7, top_k=10, top_p=0.8, repetition_penalty=1.3, seed=0)
    counts = torch.zeros(50)
    for _ in range(3000):
        draws.seen[:] = False  # keep the penalty set to the prompt so every draw sees the same distribution
        draws.seen[torch.tensor(prompt)] = True
        counts[draws(logits)] += 1
    assert set(counts.nonzero().flatten().tolist()) <= set(want.nonzero().flatten().tolist())
    torch.testing.assert_close(counts / counts.sum(), want, atol=0.03, rtol=0)


def test_batch_sampling_draws_what_each_sampler_would():
    torch.manual_seed(0)
    logits = torch.randn(6, 40) * 2
    def samplers():
        return [Sampler(40, [1], temperature=0.0), Sampler(40, [1], temperature=0.7, seed=1),
                Sampler(40, [1], temperature=1.3, seed=2), Sampler(40, [1], temperature=1.0, top_p=0.9, seed=3),
                Sampler(40, [1], temperature=0.9, repetition_penalty=1.2, seed=4), Sampler(40, [1], temperature=1.0, seed=5)]
    one_by_one, batched = samplers(), samplers()
    for _ in range(20):
        want = [sm(row) for sm, row in zip(one_by_one, logits, strict=True)]
        assert Sampler.sample_batch(batched, logits) == want
    assert want[0] == int(logits[0].argmax())


def test_temperatures_below_the_floor_are_greedy():
    # 1e-45 used to divide the logits into inf, the softmax into NaN, and draw a garbage token.
    torch.manual_seed(1)
    logits = torch.randn(8, 300) * 4
    for temperature in (1e-45, 1e-30, 1e-6):
        one = [Sampler(300, [1], temperature=temperature, seed=i)(row) for i, row in enumerate(logits)]
        batched = Sampler.sample_batch([Sampler(300, [1], temperature=temperature, seed=i) for i in range(8)], logits)
        penalised = [Sampler(300, [1], temperature=temperature, repetition_penalty=1.0001, top_p=0.9)(row) for row in logits]
        assert one == batched == penalised == logits.argmax(-1).tolist(), temperature


def test_logit_bias_and_penalties_as_openai_defines_them():
    """They were accepted by the server and ignored: logit_bias adds to a token's logit; over the generated tokens
    only (not the prompt's), presence subtracts once per token seen and frequency once per time it was generated."""
    torch.manual_seed(2)
    logits = torch.randn(30) * 2
    before, top = logits.clone(), int(logits.argmax())
    assert Sampler(30, [top], temperature=0.0, logit_bias={7: 100.0})(logits) == 7
    assert Sampler(30, [top], temperature=0.0, logit_bias={top: -100.0})(logits) != top
    penalised = Sampler(30, [top], temperature=0.9, presence_penalty=0.5, frequency_penalty=0.25, seed=3)
    generated = [penalised._picked(t) for t in (top, top, 4)]
    counts = torch.bincount(torch.tensor(generated), minlength=30).float()
    want = logits - 0.25 * counts - 0.5 * (counts > 0).float()
    reference = Sampler(30, [], temperature=0.9, seed=3)
    assert penalised(logits) == reference(want)
    batch = [Sampler(30, [1], temperature=0.0, logit_bias={7: 100.0}), Sampler(30, [1], temperature=0.0)]
    assert Sampler.sample_batch(batch, torch.stack([logits, logits])) == [7, top]
    assert torch.equal(logits, before)  # the adjustments work on a copy
