"""The UI tests' page guard fails a test on a console error or an uncaught exception, and only then."""

from __future__ import annotations

import pytest

from tests.browser_pages import watched_page


@pytest.mark.parametrize("script", ["console.error('broken')", "throw new Error('broken')"])
def test_an_error_in_the_page_fails(browser, script: str):
    with pytest.raises(AssertionError, match="broken"), watched_page(browser) as page:
        page.set_content(f"<script>{script}</script>")
        page.wait_for_timeout(50)


def test_a_clean_page_passes(browser):
    with watched_page(browser, locale="zh-CN", width=375) as page:
        page.set_content("<p>ok</p><script>console.log('fine')</script>")
        assert page.viewport_size["width"] == 375 and page.evaluate("navigator.language") == "zh-CN"


def test_network_errors_pass_only_when_expected(browser):
    script = "fetch('http://127.0.0.1:9/').catch(() => {})"  # port 9: nothing listens, the browser logs the failure
    with watched_page(browser, network_errors=True) as page:
        page.goto("about:blank")
        page.evaluate(script)
        page.wait_for_timeout(200)
    with pytest.raises(AssertionError, match="Failed to load resource"), watched_page(browser) as page:
        page.goto("about:blank")
        page.evaluate(script)
        page.wait_for_timeout(200)
    with pytest.raises(AssertionError, match="broken"), watched_page(browser, network_errors=True) as page:
        page.set_content("<script>console.error('broken')</script>")
        page.wait_for_timeout(50)
