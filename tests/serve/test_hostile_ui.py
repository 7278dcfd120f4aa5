"""The web UI against a hostile web and hostile data, in a real headless Chromium against a real server: another
site cannot frame the UI (clickjacking), markup that reaches the page from a registry name, a metric name or a
report never runs a script, and the UI's Content-Security-Policy leaves a report opened from the dashboard readable.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.browser_pages import open_report_with_key
from tests.serve.conftest import start_server

TIMEOUT_MS = 30_000
# Each of these, run, counts itself in window.__ran of the document it runs in.
HANDLER = "<img src=x onerror=\"window.__ran=(window.__ran||0)+1\">"
BREAKOUT = "\"><svg onload=\"window.__ran=(window.__ran||0)+1\">"
# A 1x1 PNG, as reports embed their plots
PIXEL = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


@pytest.fixture(scope="module")
def ui(lm_workspace: Path, tiny_model) -> Iterator:
    running, registry = start_server(lm_workspace, ["tiny-lm"], max_batch=2)
    yield running, registry
    running.stop()


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


@contextmanager
def other_site(page_html: str) -> Iterator[str]:
    """Another origin on this machine serving one page (a route fulfilled by the browser itself counts as a public
    site, which Chromium keeps from framing a loopback address anyway: a real server is needed)."""
    class Page(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server name)
            body = page_html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"  # localhost, not 127.0.0.1: another origin
    finally:
        server.shutdown()
        server.server_close()


def test_another_site_cannot_frame_the_web_ui(ui, context):
    running, _ = ui
    page = context.new_page()
    # a page of another site that frames the UI to dress it up and have the user click in it
    with other_site(f"<iframe id=ui src='{running.url}/ui/' width=800 height=600></iframe>") as evil:
        page.goto(evil)
        page.locator("#ui").wait_for(state="attached")
        frame = page.locator("#ui").element_handle().content_frame()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and frame.url in ("", "about:blank"):  # loaded, or refused
            time.sleep(0.1)
        time.sleep(0.5)
        assert not _has_ui(frame), f"another site framed the web UI ({frame.url})"
    # the UI itself still opens
    own = context.new_page()
    own.goto(running.url + "/")
    assert _has_ui(own.main_frame)


def _has_ui(frame) -> bool:
    try:
        return frame.locator("#tab-chat").count() > 0
    except Exception:  # an error page: no UI
        return False


def test_markup_that_reaches_the_page_does_not_run(ui, context):
    running, registry = ui
    page = context.new_page()
    page.goto(running.url + "/")
    page.locator("#tab-chat").wait_for()
    # whatever way markup might reach the DOM one day, the page's policy keeps it from running
    page.evaluate("(html) => document.body.insertAdjacentHTML('beforeend', html)", HANDLER + BREAKOUT)
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.__ran = 99'; "
                  "document.body.append(s); }")
    time.sleep(0.5)
    assert page.evaluate("window.__ran") is None


def test_hostile_names_in_the_registry_show_as_text_on_the_dashboard(ui, context, lm_workspace: Path):
    running, registry = ui
    model = registry.find("tiny-lm", "model")
    record = registry.add("eval", "hostile-names", kind=HANDLER, params={HANDLER: BREAKOUT, "split": HANDLER},
                          metrics={HANDLER: 1.5, f"f1_{BREAKOUT}": 0.25, "flagged_groups": 1},
                          parents=[(model.id, "evaluates")])
    try:
        page = context.new_page()
        page.goto(running.url + "/#dashboard")
        row = page.get_by_test_id("evals-table").locator(f"tr[data-id='{record.id}']")
        row.wait_for()
        assert "<img src=x" in row.inner_text()  # the markup is shown as the text it is
        page.get_by_test_id("models-table").locator(f"tr[data-id='{model.id}']").click()
        page.get_by_test_id("latest-eval").wait_for()  # the model's detail, its latest evaluation the hostile one
        assert page.evaluate("window.__ran") is None
        assert page.evaluate("document.querySelectorAll('[onerror], [onload]').length") == 0
    finally:
        registry.remove(record.id)


def test_a_report_opened_with_a_key_is_still_shown_under_the_ui_policy(ui, context, lm_workspace: Path):
    running, registry = ui
    folder = lm_workspace / "evals" / "hostile-report"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_text(
        "<!doctype html><html><head><style>p{color:#123}</style></head><body><p id=shown>report text</p>"
        f"<img id=plot alt=plot src='data:image/png;base64,{PIXEL}'>"
        "<script>window.parent.__ran = 1; document.getElementById('shown').dataset.ran = '1';</script></body></html>")
    record = registry.add("eval", "hostile-report", kind="causal-lm", path=folder)
    try:
        tab, frame = open_report_with_key(context, running.url, record.id, "any-key-the-open-server-ignores")
        frame.locator("#shown").wait_for(state="attached")
        assert frame.locator("#shown").inner_text() == "report text"
        assert frame.locator("#shown").get_attribute("data-ran") is None  # its script never ran
        assert frame.evaluate("document.getElementById('plot').naturalWidth") == 1  # its embedded plot shows
        assert tab.evaluate("window.__ran") is None
    finally:
        registry.remove(record.id)
