"""Prefix reuse on the real server: a second request that shares a long system prompt with the first is
prefilled only past the shared blocks (`llmkit_prefill_tokens_total`), `/metrics` reports the hit tokens and the
hit rate, and the greedy answer equals the one computed from scratch."""

from __future__ import annotations

import openai
import requests

from tests.serve.test_n_choices import _idle, _metrics

SYSTEM = "You are a careful assistant. " * 12  # 336 characters: the tiny model's tokens are characters


def test_shared_system_prompt_is_prefilled_once(server):
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    url, model = server.base_url, "tiny-lm"

    def ask(question: str):
        before = _idle(url, model)
        hits = _metrics(url).get(f'llmkit_prefix_cache_hit_tokens{{model="{model}"}}', 0.0)
        reply = client.chat.completions.create(model=model, temperature=0, max_tokens=12, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
        m = _metrics(url)
        return reply, _idle(url, model) - before, m[f'llmkit_prefix_cache_hit_tokens{{model="{model}"}}'] - hits

    first, computed, restored_first = ask("Who is there?")
    again, computed_again, restored = ask("Who is there?")
    other, computed_other, restored_other = ask("What is the hour?")
    assert computed == first.usage.prompt_tokens - restored_first  # an earlier test may have cached part of it
    assert restored >= len(SYSTEM) - 32 and computed_again == again.usage.prompt_tokens - restored
    assert again.choices[0].message.content == first.choices[0].message.content
    assert restored_other >= len(SYSTEM) - 32, "another question after the same system prompt reuses it too"
    assert computed_other < other.usage.prompt_tokens - len(SYSTEM) + 32
    m = _metrics(url)
    rate = m[f'llmkit_prefix_cache_hit_rate{{model="{model}"}}']
    assert 0 < rate < 1 and m[f'llmkit_prefix_cache_bytes{{model="{model}"}}'] > 0
    assert "llmkit_prefix_cache_hit_rate" in requests.get(url + "/metrics", timeout=10).text
