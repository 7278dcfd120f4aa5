"""Every self-contained HTML report, opened from disk in a real headless Chromium: it renders without
console errors, loads nothing but itself (no file beside it, no network), and each embedded plot
decodes to a real image. Reports: evaluation (a classifier, with its confusion matrix and reliability
diagram), explanation (attention heat maps), bias audits (classifier and LM), privacy audit (with the
canary exposure plot). Screenshots go to tests/artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.registry import Registry
from llmkit.workspace import Workspace

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture(scope="module")
def reports(tmp_path_factory, lm_workspace: Path, tiny_model, sms_classifier, sms_data) -> dict[str, tuple[Path, int]]:
    """report name -> (HTML file, images it must show)."""
    from llmkit.audit.bias import bias_audit
    from llmkit.audit.privacy import privacy_audit
    from llmkit.config import BiasAuditConfig, EvalConfig, ExplainConfig, PrivacyAuditConfig
    from llmkit.eval import evaluate
    from llmkit.explain import explain
    from llmkit.explain.report import write_html
    from tests.conftest import TINY, train_char_lm

    out = tmp_path_factory.mktemp("html-reports")
    ws, registry = Workspace.open(lm_workspace), Registry.for_workspace(lm_workspace)
    evaluate("sms-clf", EvalConfig(data=sms_data, split="test", out=str(out / "eval.html")), ws, registry)
    write_html(explain("tiny-lm", "ROMEO: I will", ExplainConfig(method="attention"), registry), out / "explain.html")
    bias_audit("sms-clf", BiasAuditConfig(groups=["gender"], out=str(out / "bias-classifier.html")), ws, registry)
    bias_audit("tiny-lm", BiasAuditConfig(groups=["gender"], samples=2, out=str(out / "bias-lm.html")), ws, registry)
    canary_ws = train_char_lm(out / "canary-ws", "canary", (lm_workspace / "shakespeare.txt").read_text()[:20_000], TINY,
                              max_steps=20, context=32, canaries=1, canary_repeats=[3])
    privacy_audit("canary", PrivacyAuditConfig(data="canary", samples=4, memorization_samples=4, candidates=50,
                                               out=str(out / "privacy.html")), Workspace.open(canary_ws),
                  Registry.for_workspace(canary_ws))
    return {"eval": (out / "eval.html", 2), "explain": (out / "explain.html", 1), "bias-classifier": (out / "bias-classifier.html", 0),
            "bias-lm": (out / "bias-lm.html", 0), "privacy": (out / "privacy.html", 1)}


@pytest.mark.parametrize("name", ["eval", "explain", "bias-classifier", "bias-lm", "privacy"])
def test_report_renders_alone_in_chromium(browser, reports, name: str):
    path, images = reports[name]
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("request", lambda request: requests.append(request.url))
    try:
        page.goto(path.as_uri(), wait_until="load")
        assert page.title() and page.locator("h1").count() == 1 and page.locator("table").count() >= 1
        sizes = page.evaluate("[...document.images].map(img => [img.complete, img.naturalWidth, img.naturalHeight])")
        assert len(sizes) == images, sizes
        assert all(done and w > 100 and h > 100 for done, w, h in sizes), sizes
        assert not errors, errors
        outside = [u for u in requests if u != path.as_uri() and not u.startswith("data:")]
        assert not outside, f"{name} loaded more than itself: {outside}"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"report-{name}.png"), full_page=True)
    finally:
        context.close()
