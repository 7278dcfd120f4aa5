"""The edge of the server (serve.auth): the body limit on chunked bodies, one rule for key length,
failed-auth throttling per client address; on real servers, with `requests` and raw HTTP connections."""

from __future__ import annotations

import http.client
import json
from typing import NamedTuple

import pytest
import requests

from llmkit.errors import UserError
from llmkit.serve.auth import FAILED_AUTH_LIMIT, read_admin_keys, read_keys
from tests.serve.conftest import start_server

KEY = "right-key-0001"


def _error(status: int, body: bytes | str, code: str) -> dict:
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, (status, err)
    return err


def test_a_chunked_body_over_the_limit_is_413_not_a_parse_error(server):
    def ten_megabytes():
        yield b'{"model": "tiny-lm", "prompt": "'
        for _ in range(160):
            yield b"x" * 65536
        yield b'"}'

    # A generator body: requests sends it chunked, with no Content-Length to refuse it by.
    r = requests.post(server.base_url + "/v1/completions", data=ten_megabytes(), timeout=60,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert "larger than 1024 KiB" in _error(413, r.content, "request_too_large")["message"]
    # A chunked body within the limit reaches the route whole.
    # ignore_eos: a sampled end of text after one token failed this check of the body, not of the limit
    small = iter([b'{"model": "tiny-lm", ', b'"prompt": "ROMEO:", "max_tokens": 3, "ignore_eos": true}'])
    ok = requests.post(server.base_url + "/v1/completions", data=small, timeout=60,
                       headers={"Content-Type": "application/json"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("keys, env, where, says", [
    (["a"], None, "--api-key", "one word of at least 8 characters"),
    (["seven77"], None, "--api-key", "one word of at least 8 characters"),
    (["two words"], None, "--api-key", "one word, and this one has spaces in it"),
    ([], "two words here", "$LLMKIT_API_KEY", "one word, and this one has spaces in it"),  # it said "has 14" characters
    ([], "short", "$LLMKIT_API_KEY", "one word of at least 8 characters")])
def test_every_key_source_has_the_file_keys_minimum_length(monkeypatch, keys, env, where, says):
    if env:
        monkeypatch.setenv("LLMKIT_API_KEY", env)
    else:
        monkeypatch.delenv("LLMKIT_API_KEY", raising=False)
    with pytest.raises(UserError, match=f"^{where.replace('$', '[$]')}: an API key is {says}"):
        read_keys(keys, None)


def test_a_key_source_given_empty_is_refused_never_an_open_server(monkeypatch, tmp_path):
    """A secret mounted empty, `--api-key "$KEY"` with KEY unset, a variable set to nothing: each served the API
    with no key at all (and warned 'pass --api-key' when it had been passed)."""
    for name in ("LLMKIT_API_KEY", "LLMKIT_ADMIN_KEY"):
        monkeypatch.delenv(name, raising=False)
    empty, comments = tmp_path / "empty.txt", tmp_path / "comments.txt"
    empty.write_text("")
    comments.write_text("# the key goes here\n\n")
    for source in (empty, comments):
        with pytest.raises(UserError, match=rf"^--api-keys-file {source} holds no key \(empty, or comments only\)"):
            read_keys([], str(source))
        with pytest.raises(UserError, match=rf"^--admin-keys-file {source} holds no key"):
            read_admin_keys([], [], str(source))
    with pytest.raises(UserError, match=r"^--api-key is empty \(an unset variable\?\)"):
        read_keys([""], None)
    monkeypatch.setenv("LLMKIT_API_KEY", " ")
    with pytest.raises(UserError, match=r"^\$LLMKIT_API_KEY is set but empty"):
        read_keys([], None)
    monkeypatch.delenv("LLMKIT_API_KEY")
    assert read_keys([], None) == []  # no source at all: an open server (with a warning off loopback)
    # the admin key off the command line: a file or its own variable, never the API key's
    monkeypatch.setenv("LLMKIT_ADMIN_KEY", "admin-key-123456")
    keys = tmp_path / "admin.txt"
    keys.write_text("admin-key-abcdef  # rotated 2026-12\n")
    assert read_admin_keys([], ["api-key-1234567"], str(keys)) == ["admin-key-abcdef", "admin-key-123456"]
    with pytest.raises(UserError, match="an admin key must differ from every API key"):
        read_admin_keys([], ["admin-key-123456"], None)


class Answer(NamedTuple):
    status: int
    retry_after: str | None
    body: bytes


def _get(url: str, key: str, source: str, forwarded_for: str | None = None) -> Answer:
    """GET /v1/models from a chosen local address (127.0.0.2 is loopback too, but another client)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    headers = {"Authorization": f"Bearer {key}"} | ({"X-Forwarded-For": forwarded_for} if forwarded_for else {})
    try:
        conn.request("GET", "/v1/models", headers=headers)
        response = conn.getresponse()
        return Answer(response.status, response.getheader("Retry-After"), response.read())
    finally:
        conn.close()


def test_wrong_keys_are_throttled_per_client_address(lm_workspace, tiny_model):
    running, _ = start_server(lm_workspace, ["tiny-lm"], api_keys=[KEY], ui=False)
    try:
        url = running.url
        guesses = [_get(url, f"guess-{i:08d}", "127.0.0.1").status for i in range(FAILED_AUTH_LIMIT)]
        assert guesses == [401] * FAILED_AUTH_LIMIT
        throttled = _get(url, "guess-again-1", "127.0.0.1")
        assert throttled.status == 429
        assert "too many wrong API keys" in _error(429, throttled.body, "auth_throttled")["message"]
        assert 1 <= int(throttled.retry_after) <= 60
        # The guessing address is stopped whatever it sends; nobody else is.
        assert _get(url, KEY, "127.0.0.1").status == 429
        assert _get(url, KEY, "127.0.0.2").status == 200
        assert _get(url, "guess-from-two", "127.0.0.2").status == 401
        assert requests.get(url + "/health", timeout=10).status_code == 200  # no key, no throttle
    finally:
        running.stop()


def test_behind_a_trusted_proxy_each_client_is_throttled_alone_and_otherwise_forwarded_for_is_ignored(lm_workspace,
                                                                                                     tiny_model):
    """Behind a reverse proxy every client came from the proxy's address: one stale key locked everyone out. Named
    with --trusted-proxy, the proxy's X-Forwarded-For is the client; from anyone else it is ignored (a local client
    naming a new address per guess was never throttled)."""
    running, _ = start_server(lm_workspace, ["tiny-lm"], api_keys=[KEY], ui=False, trusted_proxies=["127.0.0.1"])
    try:
        stale = [_get(running.url, "old-key-12345678", "127.0.0.1", "203.0.113.9").status for _ in range(FAILED_AUTH_LIMIT + 1)]
        assert stale == [401] * FAILED_AUTH_LIMIT + [429]
        assert _get(running.url, KEY, "127.0.0.1", "198.51.100.4").status == 200  # another client through the proxy
        assert _get(running.url, KEY, "127.0.0.1", "203.0.113.9").status == 429
    finally:
        running.stop()
    running, _ = start_server(lm_workspace, ["tiny-lm"], api_keys=[KEY], ui=False)  # no proxy trusted
    try:
        dodging = [_get(running.url, f"guess-{i:08d}", "127.0.0.1", f"7.7.7.{i}").status for i in range(FAILED_AUTH_LIMIT + 1)]
        assert dodging == [401] * FAILED_AUTH_LIMIT + [429]
    finally:
        running.stop()
    with pytest.raises(UserError, match=r"^--trusted-proxy 'proxy.local': give the proxy's IP address or network"):
        start_server(lm_workspace, ["tiny-lm"], ui=False, trusted_proxies=["proxy.local"])


def test_admin_keys_are_their_own(monkeypatch):
    monkeypatch.setenv("LLMKIT_API_KEY", "environment-key-1234")
    assert read_admin_keys([], ["environment-key-1234"]) == []  # the API key's variable never makes an admin
    assert read_admin_keys(["admin-key-5678"], ["environment-key-1234"]) == ["admin-key-5678"]
    with pytest.raises(UserError, match="--admin-key: an admin key must differ"):
        read_admin_keys(["environment-key-1234"], ["environment-key-1234"])
    with pytest.raises(UserError, match="--admin-key: an API key is one word of at least"):
        read_admin_keys(["short"], [])
