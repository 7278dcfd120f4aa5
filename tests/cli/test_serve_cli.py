"""`llmkit serve` as a process: starts, answers, stops on Ctrl-C; bad input is one line and exit 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import requests
from tests.conftest import run_cli, serving_url


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job of a non-interactive shell starts


@pytest.mark.parametrize("stop, inherited", [(signal.SIGINT, "ignored"), (signal.SIGTERM, "default")])
def test_serve_runs_until_interrupted(lm_workspace, tiny_model, stop, inherited):
    env = {**os.environ, "LLMKIT_HOME": str(lm_workspace)}
    logged = inherited == "ignored"  # one of the two runs keeps an access log
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", "tiny-lm", "--port", "0", "--no-ui",
                             *(["--access-log"] if logged else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_ignore_sigint if inherited == "ignored" else None)
    try:
        url = serving_url(proc)
        assert requests.get(url + "/health", timeout=10).json()["models"] == ["tiny-lm"]
        assert requests.get(url + "/?api_key=leaked-key-123", timeout=10).status_code == 404  # --no-ui
        assert requests.get(url + "/api/overview", timeout=10).status_code == 404  # nor the dashboard's registry data
        # refused before the app runs (a DNS-rebinding probe): logged too
        assert requests.get(url + "/v1/models", headers={"Host": "evil.example"}, timeout=10).status_code == 400
        proc.send_signal(stop)
        assert proc.wait(timeout=120) == 0  # generous: a loaded machine shuts down slowly; a hang still fails
        said = proc.stdout.read()
        line = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z 127\.0\.0\.1 GET %s %d \d+ ms"
        assert bool(re.search(line % ("/health", 200), said) and re.search(line % ("/", 404), said)
                    and re.search(line % ("/v1/models", 400), said)) is logged, said
        assert "leaked-key" not in said  # a key a client put in the query string
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_bad_input(lm_workspace, tiny_model):
    for args, expected in [(["serve", "no-such-model"], "no model 'no-such-model'"),
                           (["serve", "tiny-lm", "--backend", "tpu"], "serve.backend"),
                           (["serve", "tiny-lm", "--api-keys-file", "/nonexistent/keys"], "no such file"),
                           # One key rule for every source: the flag's key as short as a file's is refused.
                           (["serve", "tiny-lm", "--api-key", "a", "--host", "0.0.0.0"],
                            "--api-key: an API key is one word of at least 8 characters"),
                           (["serve", "tiny-lm", "--allowed-host", "llm.example:8000"], "--allowed-host 'llm.example:8000'")]:
        proc = run_cli(*args, workspace=lm_workspace, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_origins_and_proxies_a_browser_or_uvicorn_could_never_match_are_refused(lm_workspace, tiny_model, cli_here):
    """Browsers send Origin as scheme://host[:port]: a path or no scheme never matched, silently; a proxy is an
    address or a network. Each is one line, exit 2, before any model loads (in this process: no server starts)."""
    for args, expected in [(["--cors-origin", "https://app.example/"],
                            "--cors-origin 'https://app.example/': an origin is scheme://host[:port] with nothing after "
                            "it, as browsers send it; did you mean 'https://app.example'?"),
                           (["--cors-origin", "app.example"], "did you mean 'https://app.example'?"),
                           (["--trusted-proxy", "proxy.local"], "--trusted-proxy 'proxy.local': give the proxy's IP")]:
        proc = cli_here("serve", "tiny-lm", *args, workspace=lm_workspace)
        assert proc.returncode == 2 and expected in " ".join(proc.stderr.split()), proc.stderr


def test_what_is_wrong_with_the_address_or_the_names_is_said_before_any_model_loads(lm_workspace, tiny_model):
    import socket

    with socket.socket() as taken:  # a port another program listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # each said after the model had loaded, beside uvicorn's own "ERROR:" line; a bad host was blamed on the port
        for args, expected in [(["--port", str(port)], f"serve.port = {port}: 127.0.0.1:{port} is in use by another program"),
                               (["--host", "0.0.0.0.0", "--api-key", "long-enough-key"], "serve.host = '0.0.0.0.0' is not an address"),
                               (["--host", "192.0.2.1", "--api-key", "long-enough-key"], "serve.host = '192.0.2.1' is not an address of this machine"),
                               (["tiny-lm"], "two models named 'tiny-lm'")]:
            proc = run_cli("serve", "tiny-lm", *args, workspace=lm_workspace, timeout=120)
            assert proc.returncode == 2 and proc.stderr.startswith(f"error: {expected}"), proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1 and "loaded" not in proc.stdout, (proc.stdout, proc.stderr)


def test_sigterm_lets_the_answers_in_flight_finish_and_turns_new_requests_away(lm_workspace, smollm2):
    """A rolling deploy's SIGTERM: /health says draining (503) and a new request gets 503 server_shutting_down,
    while streamed answers already decoding run to their last token; a second signal stops at once (a long answer
    is cut, the process ends). One server for both: it loads the real model once."""
    import threading
    import time

    from openai import OpenAI

    env = {**os.environ, "LLMKIT_HOME": str(lm_workspace)}
    proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", "smollm2-135m", "--port", "0", "--no-ui",
                             "--shutdown-timeout", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = serving_url(proc, timeout=240)
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        got = {size: {"chunks": 0, "finish": None, "error": None, "tokens": None} for size in (40, 2000)}

        def stream(size: int) -> None:
            try:
                for chunk in client.chat.completions.create(
                        model="smollm2-135m", messages=[{"role": "user", "content": "Tell me a long story."}],
                        max_tokens=size, stream=True, stream_options={"include_usage": True},
                        extra_body={"ignore_eos": True}):
                    if chunk.usage:
                        got[size]["tokens"] = chunk.usage.completion_tokens
                    if chunk.choices and chunk.choices[0].delta.content:
                        got[size]["chunks"] += 1
                    if chunk.choices and chunk.choices[0].finish_reason:
                        got[size]["finish"] = chunk.choices[0].finish_reason
            except Exception as err:  # the stream cut: what the second signal does
                got[size]["error"] = repr(err)

        readers = {size: threading.Thread(target=stream, args=(size,)) for size in got}
        for reader in readers.values():
            reader.start()
        deadline = time.time() + 120
        while min(g["chunks"] for g in got.values()) < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert min(g["chunks"] for g in got.values()) >= 2, got
        proc.send_signal(signal.SIGTERM)
        health = None
        while time.time() < deadline:
            health = requests.get(url + "/health", timeout=10)
            if health.status_code == 503:
                break
            time.sleep(0.05)
        assert health is not None and health.status_code == 503 and health.json()["status"] == "draining"
        refused = requests.post(url + "/v1/completions", json={"model": "smollm2-135m", "prompt": "Hi", "max_tokens": 4},
                                timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "server_shutting_down"
        assert refused.headers["Retry-After"] == "1"
        readers[40].join(timeout=180)
        short = got[40]
        # all of it: 40 tokens (content chunks can be fewer: a character's bytes or a held-back stop prefix share one)
        assert short["error"] is None and short["finish"] == "length" and short["tokens"] == 40, short
        proc.send_signal(signal.SIGTERM)  # the second: now
        assert proc.wait(timeout=60) == 0
        readers[2000].join(timeout=60)
        assert got[2000]["finish"] != "length" and got[2000]["chunks"] < 1000, got[2000]  # cut, not waited for
        assert "requests in flight get up to 120 s" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
