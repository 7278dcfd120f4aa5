"""What the web UI says when a request goes wrong, in a real headless Chromium against a real server: a server
that stopped, an error answer without OpenAI's body (a proxy's 503 page, a bare 429), a stream that breaks off or
cannot be read. Each is one line in the UI's language, never the browser's own words ("Failed to fetch"), a raw
body, "undefined" or "[object Object]", and never a silent nothing. Answers other than the stopped server's are
played by Playwright in place of the server's (a proxy in front of it would send them); the page is the real one.
"""

from __future__ import annotations

import json

import pytest

from tests.browser_pages import watched_page
from tests.serve.conftest import start_server

RAW = ("Failed to fetch", "network error", "undefined", "[object Object]", "NaN", "{\"", "<html", "Service Unavailable")


def _open(page, url: str) -> None:
    page.goto(url + "/")
    page.wait_for_function("() => document.querySelector('[data-testid=model-select]').value === 'tiny-lm'")


def _send(page, text: str) -> None:
    page.get_by_test_id("prompt-input").fill(text)
    page.get_by_test_id("prompt-input").press("Enter")


def _clean(text: str) -> str:
    assert not [raw for raw in RAW if raw in text], text
    return text


def _answer(page, status: int, body: str = "", headers: dict | None = None) -> None:
    """The chat route answers `status` with `body` (as a proxy in front of the server might)."""
    page.unroute("**/v1/chat/completions")
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=status, body=body, headers=headers or {}))


@pytest.fixture
def own_server(lm_workspace, serve_lm):
    running, _ = start_server(lm_workspace, [f"tiny-lm={serve_lm}"], max_batch=2)
    yield running
    running.stop()


@pytest.mark.parametrize("lang, unreachable", [("en-US", "the server cannot be reached (is it still running?)"),
                                               ("zh-CN", "连不上服务器（它还在运行吗？）")])
def test_a_server_that_stopped_is_one_line_in_the_users_language(browser, own_server, lang, unreachable):
    with watched_page(browser, locale=lang, network_errors=True) as page:
        _open(page, own_server.url)
        own_server.stop()
        _send(page, "Hello?")
        error = page.get_by_test_id("chat-error").last
        error.wait_for()
        assert _clean(error.locator(".content").inner_text()) == unreachable
        page.get_by_test_id("tab-dashboard").click()
        page.locator("#dash-banner").wait_for()
        assert unreachable in _clean(page.locator("#dash-banner").inner_text())


@pytest.mark.parametrize("status, body, headers, shown", [
    (503, "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>", {"Content-Type": "text/html"},
     "the server is unavailable (503): try again in a moment"),
    (502, "", {}, "the server is unavailable (502): try again in a moment"),
    (429, "", {"Retry-After": "7"}, "the server is busy (429): try again in 7 s"),
    (429, "", {}, "the server is busy (429): try again in a moment"),
    (400, json.dumps({"error": "no such thing"}), {"Content-Type": "application/json"}, "no such thing"),
    (400, json.dumps({"error": {"message": {"nested": 1}}}), {"Content-Type": "application/json"},
     "the server answered 400 without saying why"),
    (429, json.dumps({"error": {"message": "too many requests waiting", "type": "rate_limit_error", "param": None,
                                "code": "queue_full"}}), {"Content-Type": "application/json", "Retry-After": "3"},
     "too many requests waiting"),
])
def test_an_error_answer_is_one_clear_line(browser, server, status, body, headers, shown):
    with watched_page(browser, network_errors=True) as page:
        _open(page, server.base_url)
        _answer(page, status, body, headers)
        _send(page, "Hello")
        error = page.get_by_test_id("chat-error").last
        error.wait_for()
        assert _clean(error.locator(".content").inner_text()) == shown
        assert page.get_by_test_id("assistant-message").count() == 0


def test_an_error_answer_is_said_in_chinese_too(browser, server):
    with watched_page(browser, locale="zh-CN", network_errors=True) as page:
        _open(page, server.base_url)
        _answer(page, 503, "<html>down</html>", {"Content-Type": "text/html"})
        _send(page, "你好")
        error = page.get_by_test_id("chat-error").last
        error.wait_for()
        assert _clean(error.locator(".content").inner_text()) == "服务器暂时不可用（503）：请稍后再试"


def test_a_stream_that_breaks_off_says_the_answer_is_incomplete(browser, server):
    chunk = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}
    with watched_page(browser) as page:
        _open(page, server.base_url)
        _answer(page, 200, f"data: {json.dumps(chunk)}\n\n", {"Content-Type": "text/event-stream"})  # no [DONE]
        _send(page, "Hello")
        bubble = page.get_by_test_id("assistant-message").last
        bubble.locator(".note").wait_for()
        assert bubble.locator(".content").inner_text() == "Hel"
        assert bubble.locator(".note").inner_text() == "the connection broke off before the answer finished"


def test_a_stream_that_cannot_be_read_is_one_line(browser, server):
    with watched_page(browser) as page:
        _open(page, server.base_url)
        _answer(page, 200, "data: {not json\n\n", {"Content-Type": "text/event-stream"})
        _send(page, "Hello")
        error = page.get_by_test_id("chat-error").last
        error.wait_for()
        assert _clean(error.locator(".content").inner_text()) == "the server's answer could not be read"
