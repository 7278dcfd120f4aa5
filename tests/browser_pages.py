"""A Chromium page for UI tests that fails the test on any console error or uncaught exception.

`watched_page(browser, ...)` is a context manager: the page it yields records errors; leaving the block closes
the context and asserts there were none (so a module-scoped fixture checks the whole module's walk).
`network_errors=True` lets through the browser's own "Failed to load resource" lines (a 4xx or 5xx answer, a server
that is down), for a test that brings them about on purpose; errors of the page's scripts still fail it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

TIMEOUT_MS = 30_000


@contextmanager
def watched_page(browser, locale: str = "en-US", width: int = 1280, height: int = 900,
                 timeout_ms: int = TIMEOUT_MS, network_errors: bool = False) -> Iterator:
    context = browser.new_context(viewport={"width": width, "height": height}, locale=locale)
    page = context.new_page()
    page.set_default_timeout(timeout_ms)
    errors: list[str] = []
    expected = ("Failed to load resource:",) if network_errors else ()
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith(expected) else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"console errors: {errors}"


def open_dashboard(page, base_url: str, lang: str, table: str, row_id: str) -> None:
    """The dashboard in `lang` (as the header's switch stores it), with the row `row_id` of `table` picked."""
    page.goto(base_url + "/")
    page.evaluate(f"localStorage.setItem('llmkit.lang', {json.dumps(lang)})")
    page.goto(base_url + "/#dashboard")
    page.get_by_test_id(table).locator(f"tr[data-id='{row_id}']").click()


def open_report_with_key(context, base_url: str, record_id: str, key: str):
    """An eval's HTML report opened from the dashboard with an API key stored in the UI: the UI fetches it with the
    key and shows it in a sandboxed frame of a new tab. Returns that tab and the frame."""
    page = context.new_page()
    page.goto(base_url + "/")
    page.evaluate(f"localStorage.setItem('llmkit.apiKey', {json.dumps(key)})")
    page.goto(base_url + "/#dashboard")
    link = page.get_by_test_id("evals-table").locator(f"tr[data-id='{record_id}']").get_by_test_id("eval-report-link")
    with context.expect_page() as opened:
        link.click()
    tab = opened.value
    holder = tab.get_by_test_id("report-frame")
    holder.wait_for(state="attached")
    return tab, holder.element_handle().content_frame()
