"""The chat by keyboard, in a real headless Chromium against a real server: Enter sends, Shift+Enter starts a new
line, and the focus stays in the composer when Send or Stop is clicked (each is disabled at once, which would
drop the focus on the page's body and leave a keyboard user nowhere).
"""

from __future__ import annotations

from tests.browser_pages import watched_page

FOCUSED = "() => document.activeElement && document.activeElement.id"


def test_enter_sends_and_shift_enter_starts_a_new_line(browser, server):
    with watched_page(browser) as page:
        page.goto(server.base_url + "/")
        page.wait_for_function("() => document.querySelector('[data-testid=model-select]').value === 'tiny-lm'")
        prompt = page.get_by_test_id("prompt-input")
        prompt.click()
        page.keyboard.type("first line")
        page.keyboard.press("Shift+Enter")
        page.keyboard.type("second")
        assert prompt.input_value() == "first line\nsecond" and page.locator(".message").count() == 0
        page.keyboard.press("Enter")
        page.locator(".message.user").wait_for()
        assert page.locator(".message.user .content").inner_text() == "first line\nsecond"
        assert prompt.input_value() == "" and page.evaluate(FOCUSED) == "prompt-input"
        page.get_by_test_id("thumbs-up").wait_for()


def test_the_focus_stays_in_the_composer_after_send_and_stop(browser, server):
    held = []  # the chat request, held unanswered so Stop has something to stop

    def hold(route) -> None:
        held.append(route)
    with watched_page(browser) as page:
        page.goto(server.base_url + "/")
        page.wait_for_function("() => document.querySelector('[data-testid=model-select]').value === 'tiny-lm'")
        page.route("**/v1/chat/completions", hold)
        page.get_by_test_id("prompt-input").fill("Hello")
        page.get_by_test_id("send-button").click()
        page.wait_for_function("() => !document.querySelector('[data-testid=stop-button]').disabled")
        assert page.evaluate(FOCUSED) == "prompt-input"
        page.get_by_test_id("stop-button").click()
        page.wait_for_function("() => document.querySelector('[data-testid=stop-button]').disabled")
        assert page.get_by_test_id("assistant-message").last.locator(".note").inner_text() == "stopped"
        assert page.evaluate(FOCUSED) == "prompt-input"
        assert len(held) == 1
        page.unroute_all(behavior="ignoreErrors")
