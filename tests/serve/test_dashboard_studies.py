"""The dashboard's hyper-parameter studies, against the session's real server: a real `llmkit tune` study of three
four-step pretraining trials of the tiny model made here. The API answers its settings, trial states, best trials
(the rows the study registered) and its report plots as URLs; a plot comes back as the study folder's PNG, and
anything else (another file of the folder, a path out of it, a symlink leaving the workspace, a run that is not a
study) is a 404 in the API's error shape. A study still running counts its trials from their runs. In a real
headless Chromium the studies table leads to the best-trials table and plots that loaded, in English and in
Chinese (every string from the tables), within a 375 px phone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from llmkit.config import TuneConfig
from llmkit.registry import Registry
from llmkit.tune import tune
from llmkit.workspace import Workspace
from tests.browser_pages import TIMEOUT_MS, open_dashboard, watched_page
from tests.conftest import tiny_config
from tests.serve.conftest import start_server
from tests.serve.test_web_ui_i18n import OVERFLOW, UNTRANSLATED, _data, _strings

SPACE = "lr: {log-float: [1.0e-3, 1.0e-2]}\nwarmup_steps: {int: [0, 4]}\n"
PLOTS = ["history", "parallel", "importances"]
# In the page: every plot of the study panel has loaded a picture (a broken one has naturalWidth 0).
PLOTS_LOADED = """() => {
  const imgs = [...document.querySelectorAll('[data-testid=study-plot]')];
  return imgs.length > 0 && imgs.every((img) => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
def study(server, tmp_path_factory):
    """Three trials of four steps each, evaluated at steps 2 and 4, nothing pruned: three complete trials, so the
    study draws all three plots."""
    ws = Workspace.open(server.workspace)
    registry = Registry.for_workspace(ws.root)
    space = tmp_path_factory.mktemp("dash-study") / "space.yaml"
    space.write_text(SPACE)
    result = tune(TuneConfig(stage="pretrain", data="tiny", space=str(space), trials=3, study="dash-study", pruner="none"),
                  tiny_config(max_steps=4, eval_every=2, checkpoint_every=4), ws, registry)
    registry.close()
    yield result
    made = [r for _, r in server.registry.children(result.record_id)]
    for record in [*made, server.registry.get(result.record_id)]:
        server.registry.remove(record.id)


def _get(server, path: str) -> requests.Response:
    return requests.get(server.base_url + path, timeout=30)


def _not_found(response, param: str) -> str:
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["type"] == "not_found_error" and error["code"] == "not_found" and error["param"] == param, error
    return error["message"]


def test_the_study_api_answers_settings_states_best_trials_and_plots(server, study):
    record = server.registry.get(study.record_id)
    listed = _get(server, "/api/studies").json()["studies"]
    summary = next(s for s in listed if s["id"] == study.record_id)
    assert summary["ref"] == record.ref and summary["finished"] is True
    assert (summary["stage"], summary["data"], summary["metric"], summary["direction"], summary["planned"]) == (
        "pretrain", "tiny", "val_loss", "min", 3)
    assert summary["states"] == {**study.states, "running": 0} and summary["states"]["complete"] == 3

    response = _get(server, f"/api/studies/{record.ref}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["states"] == summary["states"] and body["space"] == {"lr": {"log-float": [1e-3, 1e-2]},
                                                                     "warmup_steps": {"int": [0, 4]}}
    trial_runs = {r.id: r.ref for rel, r in server.registry.children(study.record_id) if rel == "trial_of"}
    # The rows the study registered, best first, each with its drawn values and its run's ref.
    assert [(r["trial"], r["value"], r["params"], r["run"], r["seconds"]) for r in body["rows"]] == [
        (row["trial"], pytest.approx(row["val_loss"]), {"lr": row["lr"], "warmup_steps": row["warmup_steps"]},
         trial_runs[row["run"]], row["seconds"]) for row in study.trials]
    assert len(body["rows"]) == 3 and [r["value"] for r in body["rows"]] == sorted(r["value"] for r in body["rows"])
    assert body["params"] == ["lr", "warmup_steps"]
    best = body["best"]
    assert (best["trial"], best["value"], best["params"]) == (study.best["number"], pytest.approx(study.best["value"]),
                                                              study.best["params"])
    assert best["model"] == study.best["model"] and best["run"] == trial_runs[study.best["run_id"]]
    assert [p["name"] for p in body["plots"]] == PLOTS
    assert all(p["url"].startswith(f"/api/studies/{study.record_id}/plots/{p['name']}.png?v=") for p in body["plots"])
    # No path of the server's disk: the study folder is given relative to the workspace.
    assert body["record"]["path"] == "runs/dash-study-study" and str(server.workspace) not in response.text
    assert body["record"]["params"]["storage"] == "sqlite:///registry.db"  # the Optuna storage: the registry's file
    in_overview = next(r for r in _get(server, "/api/overview").json()["runs"] if r["id"] == study.record_id)
    assert str(server.workspace) not in json.dumps(in_overview)
    assert _get(server, f"/api/studies/{study.record_id}").json()["rows"] == body["rows"]  # by id as by ref


def test_a_plot_is_the_png_in_the_study_folder(server, study):
    for plot in _get(server, f"/api/studies/{study.record_id}").json()["plots"]:
        response = _get(server, plot["url"])
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content == (study.folder / f"{plot['name']}.png").read_bytes()
        assert response.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_anything_but_the_study_plots_is_a_404_error_body(server, study, tmp_path):
    base = f"/api/studies/{study.record_id}/plots"
    assert (study.folder / "space.yaml").is_file()  # in the folder, but not a plot
    for name in ("space.yaml", "space.png", "history", "HISTORY.png", "history.png.bak"):
        assert "a study's plots are history.png, parallel.png, importances.png" in _not_found(_get(server, f"{base}/{name}"), "name")
    for escape in ("..%2F..%2Fregistry.db", "%2E%2E%2Fhistory.png", "../../../etc/passwd"):
        assert _get(server, f"{base}/{escape}").status_code == 404 and "error" in _get(server, f"{base}/{escape}").json()
    assert "no study named 'no-such-study'" in _not_found(_get(server, "/api/studies/no-such-study"), "ref")
    assert "no study named" in _not_found(_get(server, "/api/studies/no-such-study/plots/history.png"), "ref")
    lm_run = dict(server.registry.parents(server.registry.find("serve-lm", "model").id))["produced_by"]
    assert "no study named" in _not_found(_get(server, f"/api/studies/{lm_run.id}/plots/history.png"), "ref")

    # A study folder in the workspace whose history.png leads out of it: not listed, not served.
    outside = tmp_path / "secret.png"
    outside.write_bytes((study.folder / "history.png").read_bytes())
    folder = Path(server.workspace) / "runs" / "dash-sneaky-study"
    folder.mkdir(parents=True)
    (folder / "history.png").symlink_to(outside)
    sneaky = server.registry.add("run", "dash-sneaky", kind="study", path=folder, params={"metric": "val_loss"},
                                 metrics={"states": {"complete": 1}, "reports": [str(folder / "history.png")]})
    try:
        assert _get(server, f"/api/studies/{sneaky.id}").json()["plots"] == []
        _not_found(_get(server, f"/api/studies/{sneaky.id}/plots/history.png"), "name")
    finally:
        server.registry.remove(sneaky.id)


def test_a_running_study_counts_its_trials_from_their_runs(server):
    """A study that has not finished has no outcome yet: its states and best trial so far come from the trial
    runs registered for it (what `llmkit tune` writes on each as it goes)."""
    registry = server.registry
    running = registry.add("run", "dash-running", kind="study", params={"stage": "pretrain", "metric": "val_loss",
                                                                         "direction": "min", "trials": 5})
    made = [running]
    try:
        for number, (state, value) in enumerate([("complete", 2.5), ("pruned", 3.1), ("complete", 2.2), ("running", None)]):
            run = registry.add("run", f"dash-running-t{number}", kind="pretrain", metrics={
                "tune_study": "dash-running", "tune_trial": number, "tune_state": state, "tune_params": {"lr": 0.001 * (number + 1)},
                "tune_value": value})
            registry.link(run.id, running.id, "trial_of")
            made.append(run)
        body = _get(server, f"/api/studies/{running.id}").json()
        assert body["finished"] is False and body["planned"] == 5
        assert body["states"] == {"complete": 2, "pruned": 1, "fail": 0, "running": 1, "stopped_by_budget": 0}
        assert (body["best"]["trial"], body["best"]["value"], body["best"]["run"]) == (2, 2.2, made[3].ref)
        assert body["rows"] == [] and body["plots"] == []
    finally:
        for record in made:
            registry.remove(record.id)


# -- in the browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(browser, server, study):
    with watched_page(browser) as page:
        yield page


def _open_study(page, server, lang: str, study_id: str) -> None:
    open_dashboard(page, server.base_url, lang, "studies-table", study_id)
    page.get_by_test_id("study-trial").first.wait_for()
    page.wait_for_function(PLOTS_LOADED)


def _cells(page) -> list[list[str]]:
    return [[td.inner_text() for td in tr.locator("td").all()] for tr in page.get_by_test_id("study-trial").all()]


def test_the_study_panel_shows_the_best_trials_and_the_plots_in_english(page, server, study):
    body = _get(server, f"/api/studies/{study.record_id}").json()
    _open_study(page, server, "en", study.record_id)
    panel = page.get_by_test_id("study-detail")
    assert panel.locator("#study-title").inner_text() == f"Study — {body['ref']}"
    headers = [th.inner_text() for th in panel.get_by_test_id("study-trials").locator("thead th").all()]
    assert headers == ["Trial", "val_loss", "lr", "warmup_steps", "Seconds", "Run"]
    cells = _cells(page)
    assert [(int(c[0]), float(c[1]), int(c[3]), c[5]) for c in cells] == [
        (r["trial"], pytest.approx(r["value"], abs=5e-5), r["params"]["warmup_steps"], r["run"]) for r in body["rows"]]
    assert [float(c[2]) for c in cells] == [pytest.approx(r["params"]["lr"], rel=5e-3) for r in body["rows"]]
    states = {div.get_attribute("data-state"): div.locator("dd").inner_text()
              for div in panel.get_by_test_id("study-states").locator("div").all()}
    assert states == {"complete": "3", "pruned": "0", "fail": "0", "running": "0", "stopped_by_budget": "0"}
    assert f"Best trial: {study.best['number']}, val_loss" in panel.get_by_test_id("study-best").inner_text()
    plots = panel.get_by_test_id("study-plot")
    assert [p.get_attribute("data-name") for p in plots.all()] == PLOTS
    assert plots.first.get_attribute("alt").startswith("Optimisation history:")
    sizes = [p.evaluate("(img) => [img.naturalWidth, img.naturalHeight]") for p in plots.all()]
    assert all(w >= 500 and h >= 100 for w, h in sizes), sizes  # the PNGs as drawn (700 px wide at 100 dpi)
    # The studies table and the runs table both lead here; a trial's run opens its loss curve.
    row = page.get_by_test_id("studies-table").locator(f"tr[data-id='{study.record_id}']")
    assert "finished" in row.inner_text() and "3 of 3" in row.inner_text()
    panel.get_by_role("button", name=body["rows"][0]["run"]).click()
    page.wait_for_function(f"() => document.querySelector('#chart-title').textContent.includes({json.dumps(body['rows'][0]['run'])})")


def test_the_chinese_study_panel_is_all_from_the_tables(page, server, study):
    body = _get(server, f"/api/studies/{study.record_id}").json()
    data = _data(server) + sorted(_strings(body, set()) | set(body["params"]))
    _open_study(page, server, "zh-CN", study.record_id)
    assert page.locator("#study-title").inner_text().startswith("超参数搜索：")
    assert page.get_by_test_id("study-trials").locator("thead th").first.inner_text() == "试验"
    assert page.get_by_test_id("study-plot").first.get_attribute("alt").startswith("优化历史：")
    bad = page.evaluate(UNTRANSLATED, data)
    assert not bad, "strings not from the zh-CN table:\n" + "\n".join(bad)


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_the_study_panel_fits_a_375px_phone(page, server, study, lang):
    page.set_viewport_size({"width": 375, "height": 812})
    try:
        _open_study(page, server, lang, study.record_id)
        problems = page.evaluate(OVERFLOW)
        assert not problems, f"{lang} at 375 px:\n" + "\n".join(problems)
        widths = page.evaluate("() => [...document.querySelectorAll('[data-testid=study-plot]')].map((i) => i.clientWidth)")
        assert all(0 < w <= 375 for w in widths), widths  # scaled down to the card, not cropped away
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_with_an_api_key_the_plots_are_fetched_with_it(browser, server, study):
    """An <img src> cannot send the Bearer key: the panel fetches each plot with the stored key instead."""
    key = "studies-key-0123456789"
    running, _ = start_server(server.workspace, ["serve-lm"], api_keys=[key])
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")
    try:
        plot = f"{running.url}/api/studies/{study.record_id}/plots/history.png"
        assert requests.get(plot, timeout=30).status_code == 401
        assert requests.get(plot, headers={"Authorization": f"Bearer {key}"}, timeout=30).headers["content-type"] == "image/png"
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(running.url + "/")
        page.evaluate(f"localStorage.setItem('llmkit.apiKey', {json.dumps(key)})")
        page.goto(running.url + "/#dashboard")
        page.get_by_test_id("studies-table").locator(f"tr[data-id='{study.record_id}']").click()
        page.wait_for_function(PLOTS_LOADED)
        assert page.get_by_test_id("study-plot").count() == len(PLOTS)
    finally:
        context.close()
        running.stop()
