"""The web UI in a real headless Chromium against the real server: streamed chat, feedback and corrections
landing in the registry, the classify box, and the dashboard's tables, loss chart and model detail.

Chromium is Debian's /usr/bin/chromium (installed here when missing and we may); Playwright drives it
with its bundled driver, so nothing is downloaded. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmkit.config import EvalConfig
from llmkit.eval import evaluate
from llmkit.workspace import Workspace
from tests.browser_pages import open_report_with_key

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT_MS = 30_000


class Watched:
    """A page whose console errors, uncaught exceptions and requests are collected."""

    def __init__(self, page, base_url: str):
        self.page, self.base_url = page, base_url
        self.errors: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("request", lambda request: self.requests.append(request.url))
        page.set_default_timeout(TIMEOUT_MS)

    def check_clean(self) -> None:
        assert not self.errors, f"console errors: {self.errors}"
        external = [url for url in self.requests if not url.startswith(self.base_url + "/")]
        assert not external, f"the page loaded URLs outside the server: {external}"
        assert self.requests, "no requests were seen at all"


@pytest.fixture
def watched(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")  # English strings asserted
    page = Watched(context.new_page(), server.base_url)
    yield page
    context.close()


def until(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


# Record the assistant bubble's text length each time the DOM changes (one entry per observer callback,
# i.e. per task that touched the DOM): text arriving in one piece leaves a single entry.
OBSERVE = """() => {
  window.__lengths = [];
  const box = document.getElementById("messages");
  new MutationObserver(() => {
    const bubbles = box.querySelectorAll('[data-testid="assistant-message"] .content');
    const last = bubbles[bubbles.length - 1];
    if (!last) return;
    const n = last.textContent.length;
    const seen = window.__lengths;
    if (!bubbles[bubbles.length - 1].closest(".streaming")) return;
    if (!seen.length || seen[seen.length - 1].n !== n) seen.push({ n, t: performance.now() });
  }).observe(box, { childList: true, subtree: true, characterData: true });
}"""


def throttle(page, bytes_per_s: int | None) -> None:
    """Limit the page's download speed (Chromium's network emulation); None lifts the limit."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "uploadThroughput": -1,
                                                  "downloadThroughput": bytes_per_s or -1})


def ask(page, text: str, seed: int):
    """Send `text` in a fresh conversation; returns the finished assistant bubble, its text and the
    assistant text lengths the page showed while it streamed."""
    page.locator("#clear-chat").click()
    page.locator("#seed").fill(str(seed))
    page.evaluate("window.__lengths = []")
    page.get_by_test_id("prompt-input").fill(text)
    page.get_by_test_id("prompt-input").press("Enter")  # Enter sends
    bubble = page.get_by_test_id("assistant-message").last
    bubble.get_by_test_id("thumbs-up").wait_for()  # shown once the stream has finished
    return bubble, bubble.locator(".content").inner_text(), [e["n"] for e in page.evaluate("window.__lengths")]


def test_chat_streams_tokens_and_records_feedback_and_corrections(watched, server):
    page = watched.page
    page.goto(server.base_url + "/")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=model-select] option')].some(o => o.value === 'tiny-lm')")
    page.get_by_test_id("model-select").select_option("tiny-lm")
    page.locator("#max-tokens").fill("150")
    page.evaluate(OBSERVE)
    # The tiny model writes 150 tokens in ~50 ms, quicker than the page reads a loopback socket, so the
    # whole answer may land in one read. A throttled connection (~25 KB/s: about a second for it) paces the
    # chunks like a real model would; the page must then show each one as it comes.
    throttle(page, 25_000)
    # A tiny model may end its turn after a character or two; a few seeds find an answer long enough to
    # watch it grow.
    for seed in range(1, 11):
        bubble, answer, lengths = ask(page, "Who art thou?", seed)
        if len(answer) >= 30:
            break
    else:
        pytest.fail(f"no seed in 1-10 gave an answer of 30+ characters; the last was {answer!r}")
    throttle(page, None)
    partial = [n for n in lengths if 0 < n < len(answer)]
    assert len(partial) >= 2, f"the answer did not grow in steps (text lengths seen: {lengths})"
    assert partial == sorted(partial), lengths
    assert page.get_by_test_id("stop-button").is_disabled() and page.get_by_test_id("send-button").is_enabled()
    response_id = bubble.get_attribute("data-response-id")
    assert response_id and response_id.startswith("chatcmpl-")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)

    bubble.get_by_test_id("thumbs-up").click()
    page.wait_for_function("el => el.textContent.includes('recorded')", arg=bubble.get_by_test_id("feedback-status").element_handle())
    mine = [row for row in server.registry.list_feedback() if row["response_id"] == response_id]
    assert [row["rating"] for row in mine] == [1]
    assert mine[0]["response"] == answer and "Who art thou?" in mine[0]["prompt"]

    bubble.get_by_test_id("correct-button").click()
    bubble.get_by_test_id("correction-input").fill("I am a tiny model, good sir.")
    bubble.get_by_test_id("correction-submit").click()
    corrected = until(lambda: [row for row in server.registry.list_feedback()
                               if row["response_id"] == response_id and row["correction"]], what="the correction")
    assert corrected[0]["correction"] == "I am a tiny model, good sir."
    bubble.get_by_test_id("correction-input").wait_for(state="hidden")
    watched.check_clean()


def test_stop_button_ends_an_answer_mid_stream(watched, server):
    page = watched.page
    page.goto(server.base_url + "/#chat")
    page.wait_for_function("() => document.querySelector('[data-testid=model-select]').value === 'tiny-lm'")
    page.evaluate(OBSERVE)
    throttle(page, 10_000)  # an answer takes seconds to arrive, as from a real model
    # Click Stop at the first streamed text, in the page itself so the answer cannot finish in between;
    # an answer over before its first text reached the page needs another seed.
    for seed in range(1, 11):
        page.locator("#clear-chat").click()
        page.locator("#seed").fill(str(seed))
        page.evaluate("window.__lengths = []")
        page.get_by_test_id("prompt-input").fill("Tell me a long story.")
        page.get_by_test_id("send-button").click()
        page.wait_for_function("""() => (window.__lengths.at(-1) || {n: 0}).n > 0
                                        || document.querySelector('[data-testid=stop-button]').disabled""")
        stopped = page.evaluate("""() => {
          const stop = document.querySelector('[data-testid=stop-button]');
          if (stop.disabled) return false;
          stop.click();
          return true;
        }""")
        if stopped:
            break
    else:
        pytest.fail("every answer in seeds 1-10 finished before Stop could be clicked")
    bubble = page.get_by_test_id("assistant-message").last
    bubble.locator(".note", has_text="stopped").wait_for()
    text = bubble.locator(".content").inner_text()
    time.sleep(0.5)
    assert bubble.locator(".content").inner_text() == text  # nothing arrives after Stop
    assert page.get_by_test_id("send-button").is_enabled() and page.get_by_test_id("stop-button").is_disabled()
    watched.check_clean()


def test_max_tokens_past_the_context_is_left_to_the_server(watched, server):
    """A max tokens the context cannot hold is not sent: the server fills what the prompt leaves. The page clamped it
    to the context and the server refused prompt + max_tokens, a figure the user never typed."""
    page = watched.page
    page.goto(server.base_url + "/")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=model-select] option')].some(o => o.value === 'tiny-lm')")
    page.get_by_test_id("model-select").select_option("tiny-lm")  # context 1,024
    bodies = []
    page.on("request", lambda r: bodies.append(r.post_data_json) if r.url.endswith("/v1/chat/completions") else None)
    page.locator("#max-tokens").fill("5000")
    bubble, _, _ = ask(page, "Who art thou?", 1)
    assert "max_tokens" not in bodies[-1] and page.locator("#max-tokens").input_value() == ""
    assert not bubble.locator(".error-text").count()
    page.locator("#max-tokens").fill("12")
    ask(page, "Who art thou?", 1)
    assert bodies[-1]["max_tokens"] == 12
    watched.check_clean()


def test_classifier_models_get_a_classify_box(watched, server):
    page = watched.page
    page.goto(server.base_url + "/")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=model-select] option')].some(o => o.value === 'sms-clf')")
    page.get_by_test_id("model-select").select_option("sms-clf")
    assert page.get_by_test_id("prompt-input").is_hidden()
    page.get_by_test_id("classify-input").fill("WINNER!! Claim your free prize now, call 09061701461\nsee you at lunch?")
    page.get_by_test_id("classify-button").click()
    labels = page.get_by_test_id("classify-label")
    labels.nth(1).wait_for()
    assert {labels.nth(i).inner_text() for i in range(2)} <= {"ham", "spam"}
    # Explain the first classification: a coloured token per input token and the faithfulness line.
    page.get_by_test_id("explain-button").first.click()
    page.get_by_test_id("explain-aopc").first.wait_for(timeout=60_000)
    tokens = page.get_by_test_id("explain-token")
    assert tokens.count() > 5
    assert "random tokens" in page.get_by_test_id("explain-aopc").first.inner_text()
    coloured = page.evaluate("() => [...document.querySelectorAll('[data-testid=explain-token]')]"
                             ".filter(t => t.style.background).length")
    assert coloured >= tokens.count() - 2  # all but [CLS] and [SEP]
    watched.check_clean()


def test_dashboard_shows_models_runs_loss_chart_and_model_detail(watched, server, browser):
    registry = server.registry
    # The model served as tiny-lm: the server fixture registers it as serve-lm (context 1024).
    model = registry.find("serve-lm", "model") or registry.get("tiny-lm", "model")
    run = dict(registry.parents(model.id))["produced_by"]
    report = evaluate(model.id, EvalConfig(data="tiny", split="val", max_examples=10), Workspace.open(server.workspace),
                      registry)
    from llmkit.audit.bias import bias_audit
    from llmkit.config import BiasAuditConfig

    audit = bias_audit(model.id, BiasAuditConfig(groups=["gender"], samples=1), Workspace.open(server.workspace), registry)

    page = watched.page
    page.goto(server.base_url + "/")
    page.get_by_test_id("tab-dashboard").click()
    assert page.evaluate("location.hash") == "#dashboard"
    dashboard = page.get_by_test_id("dashboard")
    dashboard.wait_for()
    models = page.get_by_test_id("models-table")
    models.locator(f"tr[data-id='{model.id}']").wait_for()
    assert model.ref in models.inner_text()
    assert "tiny" in page.get_by_test_id("datasets-table").inner_text()

    page.get_by_test_id("runs-table").locator(f"tr[data-id='{run.id}']").click()
    page.wait_for_function("() => Number(document.querySelector('[data-testid=loss-chart]').dataset.points) > 0")
    pixels = page.evaluate("""() => {
      const c = document.querySelector('[data-testid=loss-chart]');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let painted = 0, train = 0, val = 0;
      for (let i = 0; i < d.length; i += 4) {
        if (d[i + 3] === 0) continue;
        painted++;
        if (d[i] < 80 && d[i + 1] < 130 && d[i + 2] > 200) train++;   // #2563eb
        if (d[i] > 200 && d[i + 1] > 60 && d[i + 1] < 130 && d[i + 2] < 60) val++;  // #ea580c
      }
      return {painted, train, val, total: d.length / 4};
    }""")
    assert pixels["painted"] > 1000 and pixels["train"] > 50 and pixels["val"] > 20, pixels
    assert run.ref in page.locator("#chart-title").inner_text()

    models.locator(f"tr[data-id='{model.id}']").click()
    detail = page.get_by_test_id("model-detail")
    detail.get_by_text("produced by").wait_for()
    assert run.ref in detail.inner_text() and "trained on" in detail.inner_text()
    link = detail.get_by_test_id("latest-eval").get_by_test_id("eval-report-link")
    href = link.get_attribute("href")
    assert href == f"/api/evals/{report.id}/report"
    served = page.request.get(server.base_url + href)
    assert served.ok and served.headers["content-type"].startswith("text/html") and "perplexity" in served.text()
    audits = detail.get_by_test_id("audits")
    assert "bias-audit" in audits.inner_text() and "nothing flagged" in audits.inner_text()
    assert audits.get_by_test_id("eval-report-link").get_attribute("href") == f"/api/evals/{audit.id}/report"
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    watched.check_clean()


@pytest.mark.parametrize("view", ["chat", "dashboard"])
def test_views_fit_a_375px_phone(browser, server, view):
    context = browser.new_context(viewport={"width": 375, "height": 812}, device_scale_factor=2, locale="en-US")
    page = Watched(context.new_page(), server.base_url)
    try:
        page.page.goto(f"{server.base_url}/#{view}")
        if view == "dashboard":
            page.page.get_by_test_id("models-table").locator("tbody tr").first.wait_for()
        else:
            page.page.wait_for_function("() => document.querySelector('[data-testid=model-select]').value !== ''")
        overflow = page.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the {view} view is {overflow}px wider than the phone"
        page.page.screenshot(path=str(ARTIFACTS / f"{view}-375px.png"), full_page=True)
        page.check_clean()
    finally:
        context.close()


# A report whose script reports what it can read of the UI's storage (llmkit reports have no scripts;
# this one stands for any HTML a report might carry).
KEY_PROBE = ("<!doctype html><html><body><p id='probe'>report</p><script>"
             "document.getElementById('probe').dataset.key = String(localStorage.getItem('llmkit.apiKey'));"
             "</script></body></html>")
READ_KEY = "() => { try { return 'read:' + localStorage.getItem('llmkit.apiKey'); } catch (e) { return 'blocked:' + e.name; } }"


def test_a_report_opened_from_the_dashboard_cannot_read_the_stored_key(browser, server):
    folder = Path(server.workspace) / "evals" / "key-probe"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.html").write_text(KEY_PROBE)
    record = server.registry.add("eval", "key-probe", kind="causal-lm", path=folder)
    context = browser.new_context()
    try:
        context.set_default_timeout(TIMEOUT_MS)
        # With a key set, the UI fetches the report with it and opens it in a sandboxed frame.
        tab, frame = open_report_with_key(context, server.base_url, record.id, "ui-stored-key-42")
        frame.locator("#probe").wait_for(state="attached")
        assert frame.locator("#probe").get_attribute("data-key") is None  # its script never ran
        assert frame.evaluate(READ_KEY).startswith("blocked:")  # and its origin is not the UI's
        # Opened directly (what the link does without a key), the server's CSP sandboxes it the same way.
        direct = context.new_page()
        direct.goto(server.base_url + f"/api/evals/{record.id}/report")
        assert direct.locator("#probe").get_attribute("data-key") is None
        assert direct.evaluate(READ_KEY).startswith("blocked:")
        ui_page = context.pages[0]  # the UI's own tab, where the link was
        assert ui_page.evaluate(READ_KEY) == "read:ui-stored-key-42"  # the UI itself still has its key
    finally:
        context.close()
        server.registry.remove(record.id)
