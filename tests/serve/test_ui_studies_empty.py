"""Studies with nothing in them on the dashboard, in a real headless Chromium against a real server: a study just
started (no trial yet) is waited for ("yet", plots "when the study finishes"); a study that finished with every
trial failed is over, and the panel says so instead of promising a best trial and plots that will never come.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmkit.workspace import Workspace
from tests.browser_pages import watched_page


@pytest.fixture(scope="module")
def studies(server) -> Iterator[dict[str, str]]:
    """Two study records (as `llmkit tune` writes them): one started with no trial, one finished with all failed."""
    ws = Workspace.open(server.workspace)
    out = {}
    for name, metrics in [("ui-started-study", {}),
                          ("ui-failed-study", {"states": {"complete": 0, "pruned": 0, "fail": 2}, "best_trials": []})]:
        folder = ws.folder("runs", f"{name}-study")
        folder.mkdir(parents=True, exist_ok=True)
        out[name] = server.registry.add("run", name, kind="study", path=folder, metrics=metrics,
                                        params={"stage": "sft", "metric": "val_loss", "direction": "min", "trials": 2}).id
    yield out
    for record_id in out.values():  # the session's registry is shared: leave it as it was
        server.registry.remove(record_id)


def _open_study(page, base_url: str, study_id: str):
    page.goto(base_url + "/#dashboard")
    page.get_by_test_id("studies-table").locator(f"tr[data-id='{study_id}']").click()
    panel = page.get_by_test_id("study-detail")
    panel.locator("#study-title").wait_for()
    return panel


def test_a_study_with_no_trial_yet_is_waited_for(browser, server, studies):
    with watched_page(browser) as page:
        panel = _open_study(page, server.base_url, studies["ui-started-study"])
        assert panel.get_by_test_id("study-best").inner_text() == "No trial has completed yet."
        assert panel.get_by_test_id("study-no-plots").inner_text() == "No plots yet: they are drawn when the study finishes."


@pytest.mark.parametrize("lang, best, plots", [
    ("en", "The study ended with no completed trial.", "No plots: they need completed trials."),
    ("zh-CN", "搜索已结束，没有一个试验完成。", "没有图表：需要有完成的试验。"),
])
def test_a_finished_study_with_no_completed_trial_says_it_is_over(browser, server, studies, lang, best, plots):
    with watched_page(browser, locale=lang) as page:
        panel = _open_study(page, server.base_url, studies["ui-failed-study"])
        assert panel.get_by_test_id("study-best").inner_text() == best
        assert panel.get_by_test_id("study-no-plots").inner_text() == plots
        assert panel.get_by_test_id("study-trials").count() == 0
        text = panel.inner_text()
        assert "yet" not in text and "还没有" not in text and "undefined" not in text
