"""What /metrics says about the requests an application made agrees with what its clients saw."""

from __future__ import annotations

import json
import time

import requests

SERIES = 'llmkit_request_latency_seconds_sum{route="/v1/completions"}'


def _series(server, name: str) -> float:
    text = requests.get(server.base_url + "/metrics", timeout=10).text
    return next((float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith(name + " ")), 0.0)


def _latency_sum(server) -> float:
    return _series(server, SERIES)


def test_request_latency_of_a_stream_runs_to_its_last_byte(server):
    # The histogram's help says "Time to the last byte of a response", but it was observed at the response's start:
    # 32 streams of 26 s each averaged 0.9 s in /metrics.
    before = _latency_sum(server)
    body = {"model": "tiny-lm", "prompt": "ROMEO:", "max_tokens": 1000, "temperature": 0, "ignore_eos": True,
            "stream": True}
    with requests.post(server.base_url + "/v1/completions", json=body, stream=True, timeout=120) as r:
        headers_at = time.perf_counter()
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln]
    streamed = time.perf_counter() - headers_at  # from the response's start to its end, as the client saw it
    assert lines[-1] == b"data: [DONE]"
    assert streamed > 0.05, "the stream was too short to tell its start from its end"
    deadline = time.monotonic() + 10
    while (observed := _latency_sum(server) - before) < streamed and time.monotonic() < deadline:
        time.sleep(0.05)  # the observation follows the last byte
    assert observed >= streamed


TTFT = 'llmkit_time_to_first_token_seconds_sum{model="tiny-lm"}'


def test_time_to_first_token_runs_from_the_requests_arrival(server):
    # It ran from the engine job's making: what came before (here a slow client's body; in general the chat template,
    # the tokenizer, a grammar's compile) was missing from a figure meant to be the client's wait.
    before = _series(server, TTFT)

    def slow_body():
        time.sleep(0.5)  # the headers are in; the body follows half a second later
        yield json.dumps({"model": "tiny-lm", "prompt": "ROMEO:", "max_tokens": 2, "temperature": 0}).encode()

    r = requests.post(server.base_url + "/v1/completions", data=slow_body(), timeout=60,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert _series(server, TTFT) - before >= 0.5
