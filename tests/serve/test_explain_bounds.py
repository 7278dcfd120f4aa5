"""/v1/explain is bounded like generation: its own limits on tokens and work (400 naming the limit and
the field), a small queue of its own (429 with Retry-After), and --timeout, which stops the work
between forward passes (408). SHAP on a one-token input is a result, not a 500."""

from __future__ import annotations

import concurrent.futures as cf
import math

import requests

from tests.serve.conftest import start_server


def _explain(url: str, timeout: float = 300, **body) -> requests.Response:
    return requests.post(url + "/v1/explain", json={"model": "tiny-lm", **body}, timeout=timeout)


def _error(r: requests.Response, status: int, param: str | None, code: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == code, err
    return err["message"]


def test_explanations_over_the_limits_are_400s_naming_limit_and_field(server):
    # Defaults: 256 tokens, 20,000 token positions of work. The char LM reads a character per token.
    message = _error(_explain(server.base_url, input="dragon " * 240), 400, "input", "limit_exceeded")
    assert "1681 tokens" in message and "explain_max_tokens" in message and "256" in message
    message = _error(_explain(server.base_url, input="dragon " * 20, steps=200), 400, "steps", "limit_exceeded")
    assert "200 steps x 141 tokens" in message and "explain_max_work" in message and "20000" in message
    _error(_explain(server.base_url, input="dragon " * 30, method="occlusion"), 400, "input", "limit_exceeded")
    _error(_explain(server.base_url, input="dragon " * 10, method="shap"), 400, "input", "limit_exceeded")
    _error(_explain(server.base_url, input="ROMEO:", completion="x" * 300), 400, "completion", "limit_exceeded")
    # the web UI's Explain on a long answer asks for its beginning instead of a refusal the user can do nothing about
    cut = _explain(server.base_url, input="ROMEO:", completion="x" * 300, truncate_completion=True, steps=20)
    assert cut.status_code == 200, cut.text
    body = cut.json()
    assert body["text"] == "ROMEO:" and body["target"] == "x" * (256 - 7)  # 7 tokens: BOS and "ROMEO:"
    assert body["warnings"] == ["the completion is 300 tokens; explained its first 249 (the server explains at most 256 "
                                "tokens with the input)"]
    ok = _explain(server.base_url, input="dragon " * 20, steps=100)  # 100 x 141 = 14,100 positions
    assert ok.status_code == 200, ok.text


def test_shap_on_a_one_token_input_is_its_exact_value(server):
    # One free token: captum's coalition-size distribution was 0/0 (NaN) and the route answered 500.
    shap = _explain(server.base_url, input="a", method="shap")
    assert shap.status_code == 200, shap.text
    occlusion = _explain(server.base_url, input="a", method="occlusion").json()
    body = shap.json()
    assert body["tokens"] == ["<|endoftext|>", "a"] and body["samples"] == 0
    # Its Shapley value is f(input) - f(token filled): exactly what occlusion of that token measures.
    assert math.isclose(body["scores"][1], occlusion["scores"][1], rel_tol=1e-5, abs_tol=1e-7)
    assert body["normalized"] == [0.0, math.copysign(1.0, body["scores"][1])]


def test_explain_queue_is_bounded_and_the_timeout_stops_the_work(lm_workspace, serve_lm):
    # Kernel SHAP over 1,000 tokens: 2,049 rows of 1,001 tokens, far more than the 2 s allowed.
    running, _ = start_server(lm_workspace, [f"tiny-lm={serve_lm}"], timeout=2, explain_queue=1,
                              explain_max_tokens=1024, explain_max_work=10**9, ui=False, max_context=64)
    try:
        with cf.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: _explain(running.url, input="x" * 1000, method="shap"), range(3)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [408, 429, 429], [r.text for r in answers]
        busy = next(r for r in answers if r.status_code == 429)
        assert "explanations are running or queued" in _error(busy, 429, None, "queue_full")
        assert busy.headers["Retry-After"] == "1"
        late = next(r for r in answers if r.status_code == 408)
        assert "timeout of 2 s" in _error(late, 408, None, "timeout")
        assert late.json()["error"]["type"] == "timeout_error"
        # The 408 came from the work itself stopping: the model and the queue place are free again.
        small = _explain(running.url, input="ROMEO:", method="attention")
        assert small.status_code == 200, small.text
        # a long answer is cut to the served context too (past it the question was cut instead, from the left)
        cut = _explain(running.url, input="ROMEO:", completion="x" * 100, truncate_completion=True, method="attention")
        assert cut.status_code == 200, cut.text
        assert cut.json()["text"] == "ROMEO:" and cut.json()["target"] == "x" * (64 - 7)
        assert cut.json()["warnings"] == ["the completion is 100 tokens; explained its first 57 (the model's context is "
                                          "64 tokens)"]
    finally:
        running.stop()
