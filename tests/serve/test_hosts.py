"""The Host allow-list (serve.hosts) against DNS rebinding: on the real loopback server, a page whose name
was rebound to 127.0.0.1 (Host: evil.example) is refused; loopback names and --allowed-host names pass."""

from __future__ import annotations

import pytest
import requests

from llmkit.errors import UserError
from llmkit.serve.hosts import LOOPBACK_NAMES, allowed_hosts, host_name
from tests.serve.conftest import start_server


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


def _refused(r: requests.Response, name: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "host_not_allowed", err
    assert err["type"] == "invalid_request_error" and f"--allowed-host {name}" in err["message"], err


def test_a_loopback_server_answers_loopback_names_only(server):
    port = _port(server.base_url)
    for path in ("/health", "/v1/models", "/ui/", "/api/overview"):
        _refused(requests.get(server.base_url + path, headers={"Host": f"evil.example:{port}"}, timeout=10), "evil.example")
    _refused(requests.get(server.base_url + "/health", headers={"Host": "evil.example"}, timeout=10), "evil.example")
    for host in (f"localhost:{port}", f"LocalHost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "127.0.0.1"):
        assert requests.get(server.base_url + "/health", headers={"Host": host}, timeout=10).status_code == 200, host
    # The refusal is the server's own: the request never reached a model.
    r = requests.post(server.base_url + "/v1/completions", headers={"Host": "rebound.example"}, timeout=10,
                      json={"model": "tiny-lm", "prompt": "A", "max_tokens": 2})
    _refused(r, "rebound.example")


def test_allowed_host_adds_names(lm_workspace, tiny_model):
    running, _ = start_server(lm_workspace, ["tiny-lm"], allowed_hosts=["llm.example", "10.0.0.7"], ui=False)
    try:
        port = _port(running.url)
        for host in (f"llm.example:{port}", f"LLM.example.:{port}", "10.0.0.7", f"localhost:{port}"):
            assert requests.get(running.url + "/v1/models", headers={"Host": host}, timeout=10).status_code == 200, host
        _refused(requests.get(running.url + "/v1/models", headers={"Host": "other.example"}, timeout=10), "other.example")
        # a probe by the pod's address (unknown at start): /health and /metrics answer any IP, nothing else does
        for path in ("/health", "/metrics"):
            for host in (f"10.244.3.17:{port}", f"[fd00::5]:{port}"):
                assert requests.get(running.url + path, headers={"Host": host}, timeout=10).status_code == 200, (path, host)
            _refused(requests.get(running.url + path, headers={"Host": "other.example"}, timeout=10), "other.example")
        _refused(requests.get(running.url + "/v1/models", headers={"Host": f"10.244.3.17:{port}"}, timeout=10), "10.244.3.17")
    finally:
        running.stop()


def test_bound_to_double_colon_it_answers_ipv4_and_ipv6_clients(lm_workspace, tiny_model):
    # `::` is "every interface" as 0.0.0.0 is; asyncio (so uvicorn) bound it IPv6-only and IPv4 clients were refused.
    running, _ = start_server(lm_workspace, ["tiny-lm"], host="::", allowed_hosts=["llm.example"], ui=False)
    try:
        port = _port(running.url)
        for url in (f"http://127.0.0.1:{port}", f"http://[::1]:{port}"):
            assert requests.get(url + "/v1/models", timeout=10).status_code == 200, url
        _refused(requests.get(f"http://127.0.0.1:{port}/v1/models", headers={"Host": "other.example"}, timeout=10),
                 "other.example")
    finally:
        running.stop()


def test_the_allow_list_by_bind_address():
    assert allowed_hosts("127.0.0.1", []) == set(LOOPBACK_NAMES)
    assert allowed_hosts("192.168.1.5", []) == {*LOOPBACK_NAMES, "192.168.1.5"}
    assert allowed_hosts("[::1]", ["A.example"]) == {*LOOPBACK_NAMES, "a.example"}
    # Bound to every interface with no names given, the server cannot know its names: any is answered
    # (and `llmkit serve` warns); naming hosts makes it strict again, and * is "any" said explicitly.
    assert allowed_hosts("0.0.0.0", []) is None and allowed_hosts("::", []) is None
    assert allowed_hosts("0.0.0.0", ["llm.example"]) == {*LOOPBACK_NAMES, "llm.example"}
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    for bad in ("http://llm.example", "llm.example:8000", "a b", ""):
        with pytest.raises(UserError, match="--allowed-host"):
            allowed_hosts("127.0.0.1", [bad])


@pytest.mark.parametrize("header, name", [(b"localhost:8000", "localhost"), (b"[::1]:8000", "::1"), (b"[::1]", "::1"),
                                          (b"Example.COM.", "example.com"), (b"127.0.0.1", "127.0.0.1")])
def test_host_name_drops_the_port(header, name):
    assert host_name(header) == name
