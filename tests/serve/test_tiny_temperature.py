"""A positive temperature too small to divide by (1e-45) is greedy through the API too."""

from __future__ import annotations

import requests


def test_a_tiny_temperature_answers_what_temperature_zero_does(server):
    def complete(temperature: float) -> str:
        r = requests.post(server.base_url + "/v1/completions", timeout=120, json={
            "model": "tiny-lm", "prompt": "ROMEO:", "max_tokens": 20, "temperature": temperature, "seed": 3})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    greedy = complete(0)
    assert complete(1e-45) == greedy  # old code: "zzzz..." from logits divided into inf and NaN
    assert complete(1e-6) == greedy
