"""Tokenizing and chat-template rendering run off the event loop: while a request's tokenizer call is
under way, the server still answers /health.

The served tokenizers are wrapped so that an encoding call, once armed, waits until the test has had
its /health answer. On the event loop that wait would hold every other request (the /health call
times out); in the thread pool it holds only its own request. Every encoding call also notes whether it
ran on the event loop's thread (classify used to count its tokens there, after its forward).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading

import pytest
import requests


class GatedTokenizer:
    """The real tokenizer; while armed, an encoding call signals `entered` and waits for `release`."""

    def __init__(self, inner):
        self.inner = inner
        self.armed = False
        self.entered, self.release = threading.Event(), threading.Event()
        self.on_loop: list[bool] = []  # per encoding call: did it run on the event loop's thread?

    def _gate(self):
        try:
            asyncio.get_running_loop()
            self.on_loop.append(True)
        except RuntimeError:
            self.on_loop.append(False)
        if self.armed:
            self.armed = False
            self.entered.set()
            self.release.wait(60)

    def __call__(self, *args, **kwargs):
        self._gate()
        return self.inner(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        self._gate()
        return self.inner.apply_chat_template(*args, **kwargs)

    def __len__(self):
        return len(self.inner)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def gated(server):
    models = server.running.app.state.llmkit.models
    originals = {name: m.tokenizer for name, m in models.items()}
    for m in models.values():
        m.tokenizer = GatedTokenizer(m.tokenizer)
    yield {name: m.tokenizer for name, m in models.items()}
    for name, m in models.items():
        m.tokenizer.release.set()
        m.tokenizer = originals[name]


ROUTES = [
    ("tiny-lm", "/v1/completions", {"prompt": "ROMEO: " * 100, "max_tokens": 2, "temperature": 0}),
    ("tiny-lm", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Who is there?"}], "max_tokens": 2}),
    ("sms-clf", "/v1/classify", {"input": ["WINNER!! Claim your free prize now"]}),
    ("tiny-lm", "/v1/explain", {"input": "ROMEO: I will", "method": "attention"}),
    ("minilm-l6", "/v1/embeddings", {"input": ["a sentence to embed"]}),
]


@pytest.mark.parametrize("model, path, body", ROUTES, ids=[r[1] for r in ROUTES])
def test_health_is_answered_while_a_request_is_being_tokenized(server, gated, model, path, body):
    tokenizer = gated[model]
    tokenizer.armed = True
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, server.base_url + path, json={"model": model, **body}, timeout=120)
        try:
            assert tokenizer.entered.wait(60), "the request never reached its tokenizer"
            health = requests.get(server.base_url + "/health", timeout=15)  # old code: held until the release
            assert health.status_code == 200
            assert not pending.done()  # ordering: /health answered while the request was still tokenizing
        finally:
            tokenizer.release.set()
        answer = pending.result()
    assert answer.status_code == 200, answer.text
    assert tokenizer.on_loop and not any(tokenizer.on_loop), "a tokenizer call ran on the event loop"
