"""A whole-answer (stream: false) request whose client goes away stops its generation, as a stream does:
the handler notices the closed connection while tokens are still flowing, cancels the job, and the
scheduler drops it and counts it in llmkit_cancelled_total."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import requests

MAX_TOKENS = 1000


def _metrics(server) -> dict[str, float]:
    text = requests.get(server.base_url + "/metrics", timeout=10).text
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}


def _sequence_steps(server) -> float:
    """Tokens decoded so far by tiny-lm's engine (one per running sequence per step), once it is idle."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        m = _metrics(server)
        if not m.get('llmkit_running_sequences{model="tiny-lm"}') and not m.get('llmkit_queue_depth{model="tiny-lm"}'):
            return m.get('llmkit_batch_size_sum{model="tiny-lm"}', 0.0)
        time.sleep(0.05)
    raise AssertionError("the engine never went idle")


def _cancelled(server) -> float:
    return _metrics(server).get('llmkit_cancelled_total{model="tiny-lm"}', 0.0)


def test_closing_the_connection_stops_a_non_streaming_generation(server):
    # Old code looked at the connection only after 0.5 s without a token, so a job that kept
    # generating ran to max_tokens for nobody and was never counted as cancelled.
    greedy = {"model": "tiny-lm", "prompt": "ROMEO:", "max_tokens": MAX_TOKENS, "temperature": 0}
    whole = requests.post(server.base_url + "/v1/completions", json=greedy, timeout=300).json()
    assert whole["usage"]["completion_tokens"] == MAX_TOKENS  # this prompt never stops early: all of it is work

    cancelled, steps = _cancelled(server), _sequence_steps(server)
    url = urlsplit(server.base_url)
    body = json.dumps({**greedy, "stream": False}).encode()
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        # Wait for the generation to be under way (a token decoded), then hang up without reading.
        deadline = time.monotonic() + 60
        while _metrics(server).get('llmkit_batch_size_sum{model="tiny-lm"}', 0.0) == steps:
            assert time.monotonic() < deadline, "the generation never started"
            time.sleep(0.01)
    deadline = time.monotonic() + 60
    while _cancelled(server) == cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _cancelled(server) == cancelled + 1
    decoded = _sequence_steps(server) - steps
    assert decoded < MAX_TOKENS / 2, f"{decoded} tokens decoded after the client left"
