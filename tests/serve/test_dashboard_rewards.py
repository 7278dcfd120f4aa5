"""The dashboard's reward view, against the session's real server: a GRPO run trained here on the tiny model
(three steps), DPO and KTO runs as their trainers log. The API answers their reward curves from metrics.jsonl and the GRPO
run's answers before training beside the latest evaluation's from samples.jsonl (never a file outside the
workspace); in a real headless Chromium the reward charts have points and the samples table shows those
answers as text, in English and in Chinese (every string from the tables), within a 375 px phone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from llmkit.config import DataConfig, GrpoConfig, LoraConfig
from llmkit.data import prepare
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.browser_pages import open_dashboard, watched_page
from tests.serve.test_web_ui_i18n import OVERFLOW, UNTRANSLATED, _data, _strings

WORDS = ["king", "queen", "lord", "night", "sword", "crown"]
VAL_SHOWN = 6  # val answers each GRPO evaluation writes (samples_logged; the val split has more)
# Answers are the model's text (data, like a chat message's content): the walk skips their cells.
UNTRANSLATED_BUT_SAMPLES = UNTRANSLATED.replace("const SKIP = '", "const SKIP = '.sample-text, ")
assert UNTRANSLATED_BUT_SAMPLES != UNTRANSLATED
# In the page: how many pixels of each series' colour (chart.js: train #2563eb, val #ea580c) a canvas holds.
PIXELS = """(canvas) => {
  const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let train = 0, val = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] === 0) continue;
    if (d[i] < 80 && d[i + 1] < 130 && d[i + 2] > 200) train++;
    if (d[i] > 200 && d[i + 1] > 60 && d[i + 1] < 130 && d[i + 2] < 60) val++;
  }
  return {train, val};
}"""


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _preference_rows(loss: str, steps: int, eval_every: int) -> list[dict]:
    """metrics.jsonl rows as llmkit.train.preference writes them (tests/train/test_preference.py checks the
    keys): figures per step, val figures at evaluations; rewards/accuracy only for pairs (not KTO)."""
    rows = []
    for step in range(1, steps + 1):
        margin = 0.1 * step
        rows.append({"step": step, "loss": 0.69 - 0.05 * step, "lr": 0.01, "rewards/chosen": margin / 2,
                     "rewards/rejected": -margin / 2, "rewards/margin": margin}
                    | ({"rewards/accuracy": min(1.0, 0.5 + 0.1 * step)} if loss != "kto" else {}))
        if step % eval_every == 0:
            rows.append({"step": step, "val_loss": 0.7 - 0.04 * step, "val_reward_chosen": 0.04 * step, "val_reward_rejected": 0.0,
                         "val_reward_margin": 0.04 * step}
                        | ({"val_reward_accuracy": 0.125 * step} if loss != "kto" else {}))
    return rows


@pytest.fixture(scope="module")
def runs(server, tiny_model, tmp_path_factory):
    """A GRPO run of tiny-lm trained here (three steps, evaluated before, at step 2 and at the end; a high rate,
    so its greedy answers change: before training they are blanks), and a DPO and a KTO run written as their
    trainers log (real ones would double this file's time)."""
    from llmkit.train.grpo import grpo

    ws = Workspace.open(server.workspace)
    registry = Registry.for_workspace(ws.root)
    source = tmp_path_factory.mktemp("dash-rewards") / "sums.jsonl"
    source.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a} {b}"},
                                                       {"role": "assistant", "content": str(len(a + b))}]}) + "\n"
                              for a in WORDS for b in WORDS if a != b))
    prepare(DataConfig(inputs=[str(source)], name="dash-sums", task="chat", tokenizer="char", splits={"val": 0.3, "test": 0.0}),
            ws, registry)
    tuned = grpo(GrpoConfig(name="dash-grpo", base="tiny-lm", data="dash-sums", reward="regex", pattern="^[^ ]", max_steps=3,
                            eval_every=2, batch_size=4, group_size=4, max_new_tokens=6, max_length=32, lr=0.1, beta=0.0, seed=2,
                            eval_max_examples=VAL_SHOWN, samples_logged=VAL_SHOWN, lora=LoraConfig(r=4, alpha=8),
                            # fp32 on every CPU: "auto" is bf16 where the CPU has bf16 instructions, and these three steps
                            # then leave the greedy answers blank; the view, not the arithmetic, is tested here
                            precision="fp32"), ws, registry)
    registry.close()
    out = {"grpo": server.registry.get(tuned.lineage["run"]["id"])}
    for loss in ("dpo", "kto"):
        folder = Path(server.workspace) / "runs" / f"dash-{loss}-written"
        folder.mkdir(parents=True, exist_ok=True)
        rows = _preference_rows(loss, steps=6, eval_every=3)
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        summary = {k: v for k, v in rows[-1].items() if k != "step"} | {"steps": 6}
        out[loss] = server.registry.add("run", f"dash-{loss}", kind=loss, path=folder, metrics=summary)
    yield out
    for loss in ("dpo", "kto"):
        server.registry.remove(out[loss].id)


def _metrics(server, run_id: str) -> dict:
    response = requests.get(f"{server.base_url}/api/runs/{run_id}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _by_step(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], pytest.approx(r[key])) for r in rows if key in r]


def test_a_grpo_runs_rewards_and_its_answers_before_and_after(server, runs):
    run = runs["grpo"]
    body = _metrics(server, run.id)
    rows = _rows(Path(run.path) / "metrics.jsonl")
    rewards = body["rewards"]
    assert rewards["metric"] == "reward"
    assert [(p["step"], p["value"]) for p in rewards["train"]] == _by_step(rows, "reward") and len(rewards["train"]) == 3
    # Step 0 is the evaluation before the first step (the run's summary keeps it), then steps 2 and 3 (the end).
    assert [(p["step"], p["value"]) for p in rewards["val"]] == [(0, pytest.approx(run.metrics["val_reward_before"])),
                                                                 *_by_step(rows, "val_reward")]
    assert [p["step"] for p in rewards["val"]] == [0, 2, 3]
    assert [p["step"] for p in body["train"]] == [1, 2, 3] and body["val"] == []  # the loss curve is still there

    val = [s for s in _rows(Path(run.path) / "samples.jsonl") if s["kind"] == "val"]
    assert len(val) == 3 * VAL_SHOWN  # three evaluations: before, step 2, step 3
    before, after = val[:VAL_SHOWN], val[-VAL_SHOWN:]
    assert [(s["prompt"], s["before"], s["before_reward"], s["after"], s["after_reward"]) for s in body["samples"]] == [
        (b["prompt"], b["answer"], b["reward"], a["answer"], a["reward"]) for b, a in zip(before, after, strict=True)]
    assert body["samples_after_step"] == 3
    assert [s["before"] for s in body["samples"]] != [s["after"] for s in body["samples"]]  # else the check above means little


def test_before_after_takes_the_first_and_the_latest_evaluation_of_samples_jsonl(server, runs):
    """A samples.jsonl as GRPO writes it, with twelve val prompts (ten are shown), long answers (cut), a line
    being written, and then a re-evaluation right after the last one (a resumed run evaluates first): the
    latest block is still found, but whose step it is can no longer be told."""
    prompts = [f"prompt {i}" for i in range(12)]

    def block(tag: str) -> list[dict]:
        return [{"kind": "val", "prompt": p, "answer": f"{tag} {i}" + ("x" * 500 if i == 0 else ""), "reward": i / 10}
                for i, p in enumerate(prompts)]

    train = [{"kind": "train", "prompt": prompts[0], "answer": "sampled", "reward": 0.5}] * 3
    folder = Path(server.workspace) / "runs" / "dash-blocks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 1, "loss": 0.1, "reward": 0.2}, {"step": 2, "loss": 0.1, "reward": 0.3}, {"step": 2, "val_reward": 0.4},
        {"step": 3, "loss": 0.1, "reward": 0.2}, {"step": 4, "loss": 0.1, "reward": 0.5}, {"step": 4, "val_reward": 0.6}]))
    rows = block("before") + train + block("step2") + train + train + block("step4")
    record = server.registry.add("run", "dash-blocks", kind="grpo", path=folder, metrics={"val_reward_before": 0.1})
    try:
        for extra, after, step in [([], "step4", 4), (block("again"), "again", None)]:
            (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows + extra) + '{"kind": "val", "pro')
            body = _metrics(server, record.id)
            assert [p["step"] for p in body["rewards"]["val"]] == [0, 2, 4]
            assert [s["prompt"] for s in body["samples"]] == prompts[:10]
            assert [s["before"] for s in body["samples"]][1:] == [f"before {i}" for i in range(1, 10)]
            assert [s["after"] for s in body["samples"]][1:] == [f"{after} {i}" for i in range(1, 10)]
            assert body["samples"][0]["before"] == "before 0" + "x" * 392 + "…"
            assert [s["after_reward"] for s in body["samples"]] == [i / 10 for i in range(10)]
            assert body["samples_after_step"] == step
    finally:
        server.registry.remove(record.id)


def test_preference_runs_have_margin_and_accuracy_and_a_plain_run_has_none(server, runs):
    for loss in ("dpo", "kto"):
        run = runs[loss]
        body = _metrics(server, run.id)
        rows = _rows(Path(run.path) / "metrics.jsonl")
        rewards = body["rewards"]
        assert rewards["metric"] == "margin" and body["samples"] == [] and body["samples_after_step"] is None
        for curve, key in [("train", "rewards/margin"), ("val", "val_reward_margin"), ("accuracy_train", "rewards/accuracy"),
                           ("accuracy_val", "val_reward_accuracy")]:
            assert [(p["step"], p["value"]) for p in rewards[curve]] == _by_step(rows, key), (loss, curve)
        assert [p["step"] for p in rewards["val"]] == [3, 6] and len(rewards["train"]) == 6
        assert [p["step"] for p in body["val"]] == [3, 6]  # the val loss curve too
        assert bool(rewards["accuracy_val"]) == (loss == "dpo")  # KTO rates single answers: no pairs to rank
    lm_run = dict(server.registry.parents(server.registry.find("serve-lm", "model").id))["produced_by"]
    plain = _metrics(server, lm_run.id)
    assert plain["rewards"] is None and plain["samples"] == [] and plain["train"]


def test_samples_outside_the_workspace_are_not_read(server, runs, tmp_path):
    """A run folder in the workspace whose samples.jsonl is a symlink to a file elsewhere: its rewards are
    read (metrics.jsonl is inside), its samples not."""
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"kind": "val", "prompt": "secret prompt", "answer": "secret", "reward": 1.0}) + "\n")
    folder = Path(server.workspace) / "runs" / "dash-sneaky"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5, "reward": 0.25}) + "\n")
    (folder / "samples.jsonl").symlink_to(secret)
    record = server.registry.add("run", "dash-sneaky", kind="grpo", path=folder)
    try:
        body = _metrics(server, record.id)
        assert body["rewards"]["train"] == [{"step": 1, "value": 0.25}]
        assert body["samples"] == [] and "secret" not in json.dumps(body)
    finally:
        server.registry.remove(record.id)


# -- in the browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(browser, server, runs):
    with watched_page(browser) as page:
        yield page


def _open_run(page, server, lang: str, run_id: str) -> None:
    open_dashboard(page, server.base_url, lang, "runs-table", run_id)
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=reward-chart]')].length > 0 && "
                           "[...document.querySelectorAll('[data-testid=reward-chart]')].every((c) => Number(c.dataset.points) > 0)")


def test_the_reward_chart_and_the_answers_before_and_after_in_english(page, server, runs):
    run = runs["grpo"]
    body = _metrics(server, run.id)
    _open_run(page, server, "en", run.id)
    panel = page.get_by_test_id("run-rewards")
    assert run.ref in panel.locator("h2").inner_text()
    [chart] = panel.get_by_test_id("reward-chart").all()
    assert chart.get_attribute("data-points") == str(len(body["rewards"]["train"]) + len(body["rewards"]["val"]))
    pixels = chart.evaluate(PIXELS)
    assert pixels["train"] > 50 and pixels["val"] > 20, pixels
    table = panel.get_by_test_id("reward-samples")
    assert "At step 3" in table.locator("thead").inner_text()
    cells = [[td.text_content() for td in tr.locator("td").all()] for tr in table.get_by_test_id("reward-sample").all()]
    shown = lambda text: text if text.strip() else "(only whitespace)" if text else "(empty answer)"  # noqa: E731
    assert [[c[0], c[1], c[3]] for c in cells] == [[s["prompt"], shown(s["before"]), shown(s["after"])] for s in body["samples"]]
    assert [float(c[2]) for c in cells] == [s["before_reward"] for s in body["samples"]]
    # The runs table's validation column: the reward tuned for, or the loss.
    row = page.get_by_test_id("runs-table").locator(f"tr[data-id='{run.id}']")
    assert "val reward" in row.inner_text()

    # A DPO run: a margin chart and an accuracy chart (two scales, two axes), no samples; a KTO run: the margin.
    for loss, charts in [("dpo", 2), ("kto", 1)]:
        page.get_by_test_id("runs-table").locator(f"tr[data-id='{runs[loss].id}']").click()
        page.wait_for_function(f"() => document.querySelector('#rewards-title')?.textContent.includes({json.dumps(runs[loss].ref)})")
        drawn = panel.get_by_test_id("reward-chart")
        assert drawn.count() == charts and all(c.get_attribute("data-points") == "8" for c in drawn.all())  # 6 steps, 2 evals
        assert all(c.evaluate(PIXELS)["val"] > 20 for c in drawn.all())
        assert panel.get_by_test_id("reward-samples").count() == 0
    dpo_row = page.get_by_test_id("runs-table").locator(f"tr[data-id='{runs['dpo'].id}']")
    assert "val reward accuracy 0.7500" in dpo_row.inner_text()
    # A run without rewards hides the panel.
    lm_run = dict(server.registry.parents(server.registry.find("serve-lm", "model").id))["produced_by"]
    page.get_by_test_id("runs-table").locator(f"tr[data-id='{lm_run.id}']").click()
    panel.wait_for(state="hidden")


def test_model_text_is_shown_as_text_never_as_markup(page, server, runs):
    folder = Path(server.workspace) / "runs" / "dash-markup"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5, "reward": 1.0}) + "\n")
    probe = '<img src=x onerror="window.__pwned = 1">'
    (folder / "samples.jsonl").write_text(json.dumps({"kind": "val", "prompt": "<b>p</b>", "answer": probe, "reward": 0.0}) + "\n")
    record = server.registry.add("run", "dash-markup", kind="grpo", path=folder)
    try:
        _open_run(page, server, "en", record.id)
        row = page.get_by_test_id("reward-sample")
        row.wait_for()
        assert row.locator("td").nth(1).text_content() == probe and row.locator("img, b").count() == 0
        assert page.evaluate("window.__pwned") is None
        assert row.locator("td").nth(3).text_content() == "—"  # no evaluation after the first: nothing to compare
    finally:
        server.registry.remove(record.id)


def test_the_chinese_reward_view_is_all_from_the_tables(page, server, runs):
    data = _data(server)
    for run in runs.values():
        data += sorted(_strings(_metrics(server, run.id)["run"], set()))
    for run in runs.values():
        _open_run(page, server, "zh-CN", run.id)
        assert page.locator("#rewards-title").inner_text().startswith("奖励曲线")
        bad = page.evaluate(UNTRANSLATED_BUT_SAMPLES, data)
        assert not bad, f"{run.kind}: strings not from the zh-CN table:\n" + "\n".join(bad)
    _open_run(page, server, "zh-CN", runs["grpo"].id)
    assert "第 3 步" in page.get_by_test_id("reward-samples").locator("thead").inner_text()


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_the_reward_view_fits_a_375px_phone(page, server, runs, lang):
    page.set_viewport_size({"width": 375, "height": 812})
    try:
        _open_run(page, server, lang, runs["grpo"].id)
        page.get_by_test_id("reward-sample").first.wait_for()
        problems = page.evaluate(OVERFLOW)
        assert not problems, f"{lang} at 375 px:\n" + "\n".join(problems)
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})
