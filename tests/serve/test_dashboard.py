"""The dashboard API on its own: a FastAPI app with just the /api router over a real workspace (the tiny
model, an evaluation of it, and an int8 copy with its before/after table)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from llmkit.config import EvalConfig, QuantizeConfig
from llmkit.eval import evaluate
from llmkit.optimize.quantize import quantize
from llmkit.registry import Registry
from llmkit.serve.dashboard import router
from llmkit.serve.errors import install_handlers
from llmkit.workspace import Workspace


@pytest.fixture(scope="module")
def registry(lm_workspace: Path, tiny_model) -> Registry:
    return Registry.for_workspace(Workspace.open(lm_workspace).root)


@pytest.fixture(scope="module")
def client(lm_workspace: Path, registry: Registry) -> TestClient:
    app = FastAPI()
    install_handlers(app)
    app.state.registry = registry
    app.state.workspace = Workspace.open(lm_workspace)
    app.include_router(router)
    return TestClient(app)


@pytest.fixture(scope="module")
def evaluated(lm_workspace: Path, registry: Registry, tiny_model):
    """An evaluation of tiny-lm on the val split: a registered report folder with report.html."""
    return evaluate(tiny_model.id, EvalConfig(data="tiny", split="val", context=32, max_examples=20),
                    Workspace.open(lm_workspace), registry)


@pytest.fixture(scope="module")
def quantized(lm_workspace: Path, registry: Registry, tiny_model):
    """An int8 copy of tiny-lm with its before/after table (whose evaluations the dashboard rebuilds it from)."""
    return quantize(tiny_model.id, QuantizeConfig(method="int8-weight", group_size=32, name="dash-int8",
                                                  eval_max_examples=20), Workspace.open(lm_workspace), registry)


def assert_not_found(response, needle: str) -> None:
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "not_found_error" and error["code"] == "not_found" and error["param"] == "ref"
    assert needle in error["message"]


def test_overview_lists_each_record_type_newest_first(client, registry, tiny_model):
    body = client.get("/api/overview").json()
    assert set(body) == {"datasets", "runs", "models", "evals"}
    assert "tiny" in [d["name"] for d in body["datasets"]]
    model = next(m for m in body["models"] if m["id"] == tiny_model.id)
    assert model["ref"] == f"tiny-lm:v{tiny_model.version}" and model["kind"] == "causal-lm"
    assert model["params"]["parameters"] > 0 and model["size_bytes"] > 0
    for records in body.values():
        created = [r["created_at"] for r in records]
        assert created == sorted(created, reverse=True)
    assert len(body["runs"]) == len(registry.list("run"))


def test_run_metrics_are_the_loss_curve_from_metrics_jsonl(client, registry, tiny_model):
    run = dict((rel, r) for rel, r in registry.parents(tiny_model.id))["produced_by"]
    rows = [json.loads(line) for line in (Path(run.path) / "metrics.jsonl").read_text().splitlines()]
    body = client.get(f"/api/runs/{run.id}/metrics").json()
    assert body["run"]["id"] == run.id
    assert [p["step"] for p in body["train"]] == list(range(1, 61))  # 60 steps, one loss each
    assert body["train"][0]["value"] == pytest.approx(next(r["loss"] for r in rows if r["step"] == 1 and "loss" in r))
    assert [p["step"] for p in body["val"]] == [30, 60]  # eval_every=30
    assert body["train"][-1]["value"] < body["train"][0]["value"]  # it learned something
    assert client.get(f"/api/runs/{run.ref}/metrics").json()["train"] == body["train"]  # name:vN works too


def test_unknown_refs_are_openai_shaped_404s(client):
    assert_not_found(client.get("/api/runs/no-such-run/metrics"), "no-such-run")
    assert_not_found(client.get("/api/models/no-such-model"), "no-such-model")
    assert_not_found(client.get("/api/evals/no-such-eval/report"), "no-such-eval")


def test_model_detail_has_lineage_and_evaluations(client, tiny_model, evaluated):
    body = client.get(f"/api/models/{tiny_model.id}").json()
    assert body["record"]["id"] == tiny_model.id
    assert {link["relation"] for link in body["parents"]} == {"produced_by", "trained_on"}
    assert {link["record"]["type"] for link in body["parents"]} == {"run", "dataset"}
    mine = next(e for e in body["evals"] if e["id"] == evaluated.id)
    assert mine["kind"] == "causal-lm" and mine["metrics"]["perplexity"] > 1
    created = [e["created_at"] for e in body["evals"]]
    assert created == sorted(created, reverse=True)
    assert all(link["relation"] not in ("evaluates", "audits") for link in body["children"])


def test_model_detail_lists_audits_with_their_reports(client, lm_workspace, registry, tiny_model):
    from llmkit.audit.bias import bias_audit
    from llmkit.config import BiasAuditConfig

    report = bias_audit(tiny_model.id, BiasAuditConfig(groups=["gender"], samples=2), Workspace.open(lm_workspace), registry)
    body = client.get(f"/api/models/{tiny_model.id}").json()
    audit = next(a for a in body["audits"] if a["id"] == report.id)
    assert audit["kind"] == "bias-audit" and audit["metrics"]["flagged_groups"] == 0
    assert all(e["kind"] not in ("bias-audit", "privacy-audit") for e in body["evals"])
    page = client.get(f"/api/evals/{report.id}/report")
    assert page.status_code == 200 and "Bias audit" in page.text


def test_eval_report_is_served_as_html(client, evaluated):
    response = client.get(f"/api/evals/{evaluated.id}/report")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.text == (Path(evaluated.path) / "report.html").read_text(encoding="utf-8")


def test_eval_report_outside_the_workspace_is_not_served(client, registry, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "report.html").write_text("<p>secret</p>")
    rec = registry.add("eval", "stray-eval", kind="causal-lm", path=outside)
    try:
        assert_not_found(client.get(f"/api/evals/{rec.id}/report"), "stray-eval")
    finally:
        registry.remove(rec.id)


def test_eval_report_through_a_symlink_out_of_the_workspace_is_not_served(client, registry, lm_workspace, tmp_path):
    (tmp_path / "report.html").write_text("<p>secret</p>")
    link = lm_workspace / "evals" / "sneaky-link"
    link.symlink_to(tmp_path, target_is_directory=True)
    rec = registry.add("eval", "sneaky-eval", kind="causal-lm", path=link)
    try:
        assert_not_found(client.get(f"/api/evals/{rec.id}/report"), "sneaky-eval")
    finally:
        registry.remove(rec.id)
        link.unlink()


def test_compressed_model_detail_has_its_before_after_table(client, tiny_model, quantized):
    q, rows = quantized
    body = client.get(f"/api/models/{q.id}").json()
    assert [(link["relation"], link["record"]["id"]) for link in body["parents"]] == [("quantized_from", tiny_model.id)]
    [table] = body["compression"]
    assert table["relation"] == "quantized_from"
    got = {row["stage"]: row for row in table["rows"]}
    for measured in rows:
        row = got[measured["stage"]]
        assert row["model"] == measured["model"]
        assert row["perplexity"] == pytest.approx(measured["perplexity"], rel=1e-3)  # the table rounds
        # the table rounds speed to 0.1 token/s: on a busy machine (9.54 -> 9.5) that is more than a relative 1e-3
        assert row["decode_tokens_per_s"] == pytest.approx(measured["decode_tokens_per_s"], abs=0.05 + 1e-9)
        assert row["size_mb"] == pytest.approx(measured["size_mb"], rel=1e-3)
    assert got["after"]["size_mb"] < got["before"]["size_mb"]
    source = client.get(f"/api/models/{tiny_model.id}").json()
    assert any(t["relation"] == "quantized_from" and t["rows"][1]["model"] == q.ref for t in source["compression"])


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_answers_carry_no_absolute_paths(client, lm_workspace, registry, tiny_model, evaluated, tmp_path):
    outside = tmp_path / "corpus.txt"
    inside = Path(lm_workspace) / "datasets" / "paths-probe"
    inside.mkdir(parents=True, exist_ok=True)
    probe = registry.add("dataset", "paths-probe", kind="lm", path=inside,
                         params={"inputs": [str(outside)], "nested": {"cache": str(inside / "cache")}})
    try:
        run = dict((rel, r) for rel, r in registry.parents(tiny_model.id))["produced_by"]
        overview = client.get("/api/overview").json()
        answers = [overview, client.get(f"/api/models/{tiny_model.id}").json(), client.get(f"/api/runs/{run.id}/metrics").json()]
        for answer in answers:
            absolute = [s for s in _strings(answer) if s.startswith("/") or str(lm_workspace) in s or str(tmp_path) in s]
            assert not absolute, absolute
        shown = next(d for d in overview["datasets"] if d["id"] == probe.id)
        # Inside the workspace: relative to it; outside: only the last part.
        assert shown["path"] == "datasets/paths-probe"
        assert shown["params"] == {"inputs": ["…/corpus.txt"], "nested": {"cache": "datasets/paths-probe/cache"}}
        model = next(m for m in overview["models"] if m["id"] == tiny_model.id)
        assert model["path"] == Path(tiny_model.path).resolve().relative_to(Path(lm_workspace).resolve()).as_posix()
    finally:
        registry.remove(probe.id)


def test_eval_report_is_sandboxed_by_its_response_header(client, evaluated):
    # Opened from the dashboard, the report must not run in the UI's origin (where the API key is stored).
    response = client.get(f"/api/evals/{evaluated.id}/report")
    assert response.headers["content-security-policy"] == "sandbox"
    assert response.headers["x-content-type-options"] == "nosniff"
