"""`llmkit serve` as a process: starts, answers, stops on Ctrl-C; bad input is one line and exit 2."""

from __future__ import annotations

import os
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
        assert requests.get(url + "/", timeout=10).status_code == 404  # --no-ui
        proc.send_signal(stop)
        assert proc.wait(timeout=120) == 0  # generous: a loaded machine shuts down slowly; a hang still fails
        said = proc.stdout.read()  # uvicorn's access lines go to stdout, as its own do
        assert ('"GET /health HTTP/1.1" 200' in said and '"GET / HTTP/1.1" 404' in said) is logged, said
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
