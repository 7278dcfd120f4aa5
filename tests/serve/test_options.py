"""`llmkit serve` options the README and `--help` promise, on one real server process.

The process carries them all at once: `--api-keys-file` and `$LLMKIT_API_KEY` (the keys), `--cors-origin`,
and `--workers 2 --max-batch 2` (two decode workers of two sequences each).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest
import requests

FILE_KEYS = ["file-key-0001", "file-key-0002"]
RETIRED_KEY = "retired-key-0009"  # commented out in the file
ENV_KEY = "env-key-0003"
ORIGIN = "http://allowed.example:5173"
MAX_BATCH = 2


@pytest.fixture(scope="module")
def url(lm_workspace: Path, serve_lm: str, tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("serve-options")
    keys = tmp / "keys.txt"
    keys.write_text(f"# the team's keys\n{FILE_KEYS[0]}\n\n{FILE_KEYS[1]}  # ci\n# {RETIRED_KEY}\n")
    env = {**os.environ, "LLMKIT_HOME": str(lm_workspace), "LLMKIT_API_KEY": ENV_KEY}
    out, err = tmp / "stdout.txt", tmp / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", f"tiny-lm={serve_lm}", "--port", "0", "--no-ui",
                                 "--backend", "torch", "--api-keys-file", str(keys), "--cors-origin", ORIGIN,
                                 "--workers", "2", "--max-batch", str(MAX_BATCH), "--threads", "1"],
                                stdout=stdout, stderr=stderr, text=True, env=env)
    try:
        found, deadline = None, time.monotonic() + 120
        while found is None:
            assert proc.poll() is None, f"the server exited: {err.read_text()}"
            assert time.monotonic() < deadline, f"the server never said where it listens: {out.read_text()}"
            found = re.search(r"serving on (http://127\.0\.0\.1:\d+)", out.read_text())
            time.sleep(0.1)
        assert "web UI" not in out.read_text(), out.read_text()  # --no-ui: it still named one, and / was a 404
        yield found.group(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _client(url: str, key: str) -> openai.OpenAI:
    # Used as a context manager: an idle keep-alive connection would hold up the server's shutdown.
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_keys_from_the_file_and_the_environment_are_accepted_and_no_other(url):
    for key in [*FILE_KEYS, ENV_KEY]:
        with _client(url, key) as client:
            assert [m.id for m in client.models.list().data] == ["tiny-lm"], key
            done = client.completions.create(model="tiny-lm", prompt="A", max_tokens=2, temperature=0)
            assert done.usage.completion_tokens == 2 or done.choices[0].finish_reason == "stop", key
    for key in [RETIRED_KEY, "not-a-listed-key", FILE_KEYS[0] + "x"]:
        with _client(url, key) as client, pytest.raises(openai.AuthenticationError):
            client.models.list()
    assert requests.get(url + "/v1/models", timeout=10).status_code == 401  # no key at all


def test_cors_headers_go_to_the_allowed_origin_only(url):
    def preflight(origin: str, method: str = "POST", path: str = "/v1/chat/completions") -> requests.Response:
        # the headers the openai JS SDK sends from a browser: its x-stainless-* ones failed the preflight
        return requests.options(url + path, timeout=10, headers={
            "Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-stainless-lang"})

    # The browser's preflight carries no key: it must pass without one.
    ok = preflight(ORIGIN)
    assert ok.status_code == 200, ok.text
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in preflight("http://elsewhere.example").headers
    unload = preflight(ORIGIN, "DELETE", "/v1/adapters/chat")  # the admin route that unloads an adapter
    assert unload.status_code == 200 and "DELETE" in unload.headers["access-control-allow-methods"], unload.text

    auth = {"Authorization": f"Bearer {FILE_KEYS[0]}"}
    allowed = requests.get(url + "/v1/models", timeout=10, headers={**auth, "Origin": ORIGIN})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = requests.get(url + "/v1/models", timeout=10, headers={**auth, "Origin": "http://elsewhere.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def _metric(url: str, series: str) -> float:
    text = requests.get(url + "/metrics", timeout=10, headers={"Authorization": f"Bearer {ENV_KEY}"}).text
    return next((float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(series + " ")), 0.0)


def test_two_workers_decode_four_sequences_at_once_with_the_text_of_one(url):
    prompts = ["ROMEO:\n", "JULIET:\n", "KING:\n", "QUEEN:\n"]
    # Long enough that the four overlap for many decode steps.
    ask = dict(model="tiny-lm", max_tokens=300, temperature=0)
    with _client(url, FILE_KEYS[1]) as client:
        alone = [client.completions.create(prompt=p, **ask).choices[0].text for p in prompts]
    running = 'llmkit_running_sequences{model="tiny-lm"}'
    start = threading.Barrier(len(prompts))

    def together(p: str) -> str:
        with _client(url, FILE_KEYS[1]) as client:
            start.wait()
            return client.completions.create(prompt=p, **ask).choices[0].text

    most = 0.0
    with cf.ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(together, p) for p in prompts]
        while not all(f.done() for f in futures):
            most = max(most, _metric(url, running))
            time.sleep(0.02)
        texts = [f.result() for f in futures]
    assert texts == alone
    # A worker holds at most --max-batch sequences, so more running at once means both workers decode.
    assert most == len(prompts) > MAX_BATCH, f"at most {most} sequences ran at once"
    steps = _metric(url, 'llmkit_batch_size_count{model="tiny-lm"}')
    assert _metric(url, 'llmkit_batch_size_bucket{le="2.0",model="tiny-lm"}') == steps > 0, "a step exceeded --max-batch"
