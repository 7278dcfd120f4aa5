"""Served answers → ratings and corrections in the registry → a chat dataset for the next SFT run."""

from __future__ import annotations

import io
import json

import openai
import pytest
import requests
from rich.console import Console

from llmkit.config import FeedbackDataConfig, ServeConfig
from llmkit.data.feedback import dataset_from_feedback
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.serve.conftest import start_server


def test_logged_requests_survive_a_restart_and_become_a_dataset(tmp_path, lm_workspace, serve_lm):
    running, registry = start_server(lm_workspace, [f"tiny-lm={serve_lm}"], log_requests=True, ui=False)
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
        asked = [{"role": "user", "content": "What is your name, good sir?"}]
        # The tiny model often ends its turn at once; take the first seed that says something.
        good = next(out for seed in range(20) if (out := client.chat.completions.create(
            model="tiny-lm", messages=asked, max_tokens=12, seed=seed)).choices[0].message.content.strip())
        bad = client.completions.create(model="tiny-lm", prompt="To be, or not", max_tokens=12, seed=2)
    finally:
        running.stop()
    logged = {row["response_id"]: row for row in registry.list_feedback() if row["extra"].get("kind") == "request"}
    assert logged[good.id]["response"] == good.choices[0].message.content
    assert logged[good.id]["extra"]["model_ref"].startswith(serve_lm)
    assert logged[bad.id]["prompt"] == "To be, or not"

    # A new server process knows nothing in memory: feedback finds the answers in the request log.
    running, registry = start_server(lm_workspace, [f"tiny-lm={serve_lm}"], ui=False)
    try:
        for body in ({"response_id": good.id, "rating": 1},
                     {"response_id": bad.id, "rating": -1, "correction": " to be: that is the question."}):
            assert requests.post(running.url + "/v1/feedback", json=body, timeout=30).status_code == 200
    finally:
        running.stop()

    ws = Workspace.open(lm_workspace)
    ds = dataset_from_feedback(FeedbackDataConfig(name="served-feedback", model="tiny-lm", val=0.0), ws,
                               Registry.for_workspace(ws.root))
    conversations = [r["messages"] for r in ds.records("train")]
    assert asked + [{"role": "assistant", "content": good.choices[0].message.content.strip()}] in [
        [{**m, "content": m["content"].strip()} for m in c] for c in conversations]
    corrected = [c for c in conversations if c[0]["content"] == "To be, or not"]
    assert corrected and corrected[0][-1]["content"].strip() == "to be: that is the question."


def test_a_registry_outage_loses_request_logs_never_answers(lm_workspace, serve_lm):
    """With --log-requests, a registry database that goes away (a failover, a network blip) turned every completion
    into a 500 after its answer was generated: the answer goes out, the lost row is counted, feedback and the
    dashboard say 503 registry_unavailable, and logging resumes when the database is back."""
    import sqlalchemy as sa

    running, registry = start_server(lm_workspace, [f"tiny-lm={serve_lm}"], log_requests=True)
    state = running.app.state.llmkit
    healthy = state.registry.engine
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
        # a real database that refuses connections: nothing listens on port 1
        state.registry.engine = sa.create_engine("postgresql+psycopg://llmkit@127.0.0.1:1/llmkit",
                                                 connect_args={"connect_timeout": 5})
        answered = client.completions.create(model="tiny-lm", prompt="ROMEO:", max_tokens=4, seed=1)
        assert answered.usage.completion_tokens == 4
        streamed = list(client.completions.create(model="tiny-lm", prompt="JULIET:", max_tokens=4, seed=1, stream=True))
        assert streamed[-1].choices[0].finish_reason is not None
        metrics = requests.get(running.url + "/metrics", timeout=30).text
        assert "llmkit_request_log_errors_total 2.0" in metrics
        for method, path, body in (("post", "/v1/feedback", {"response_id": answered.id, "rating": 1}),
                                   ("get", "/api/overview", None)):
            r = requests.request(method, running.url + path, json=body, timeout=30)
            assert r.status_code == 503 and r.json()["error"]["code"] == "registry_unavailable", r.text
            assert r.headers["Retry-After"] == "5"
        state.registry.engine = healthy  # back
        again = client.completions.create(model="tiny-lm", prompt="ROMEO:", max_tokens=4, seed=1)
    finally:
        state.registry.engine = healthy
        running.stop()
    logged = {row["response_id"] for row in registry.list_feedback()}
    assert again.id in logged and answered.id not in logged


def test_open_server_on_all_interfaces_warns(lm_workspace, serve_lm):
    from llmkit.serve import start

    out = io.StringIO()
    ws = Workspace.open(lm_workspace)
    running = start(ServeConfig(models=[serve_lm], host="0.0.0.0", port=0, ui=False), ws, Registry.for_workspace(ws.root),
                    console=Console(file=out, width=200))
    try:
        assert "without an API key" in out.getvalue()
        assert json.loads(requests.get(running.url.replace("0.0.0.0", "127.0.0.1") + "/health", timeout=10).text)["status"] == "ok"
    finally:
        running.stop()


def test_a_boolean_rating_or_a_blank_correction_is_refused_not_guessed():
    """true == 1 to Python: a client's boolean was stored as a thumbs-up (training data, later); a blank correction
    was stored and then counted as none."""
    import pydantic

    from llmkit.serve.schemas import FeedbackRequest

    for body, field in (({"response_id": "r", "rating": True}, "rating"), ({"response_id": "r", "correction": "  "}, "correction")):
        with pytest.raises(pydantic.ValidationError, match=field):
            FeedbackRequest.model_validate(body)
    assert FeedbackRequest.model_validate({"response_id": "r", "rating": 1.0}).rating == 1  # 1.0 is the integer 1


def test_each_choice_of_an_n_response_is_rated_on_its_own(lm_workspace, serve_lm):
    # {"index": 1} was ignored: the rating went to choice 0 and replaced its thumbs-up; choice 1 could not be rated
    from llmkit.data.feedback_rows import read_feedback

    running, registry = start_server(lm_workspace, [f"tiny-lm={serve_lm}"], log_requests=True, ui=False)
    try:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0)
        out = client.completions.create(model="tiny-lm", prompt="ROMEO:", max_tokens=12, n=2, temperature=1.0, seed=5)
        texts = [c.text for c in sorted(out.choices, key=lambda c: c.index)]
        assert texts[0] != texts[1]
        post = lambda body: requests.post(running.url + "/v1/feedback", json={"response_id": out.id, **body}, timeout=30)  # noqa: E731
        assert post({"rating": 1}).status_code == 200 and post({"rating": -1, "choice": 1}).status_code == 200
        refused = post({"rating": 1, "choice": 2})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "choice", refused.text
        assert "has 2 choices (0 to 1)" in refused.json()["error"]["message"]
    finally:
        running.stop()
    rows = [r for r in registry.list_feedback(response_id=out.id) if r["extra"].get("kind") == "feedback"]
    assert [(r["rating"], r["response"], r["extra"].get("choice")) for r in rows] == [(1, texts[0], 0), (-1, texts[1], 1)]
    latest = read_feedback(registry.list_feedback(response_id=out.id)).latest  # two responses, not one superseded
    assert {key: row["rating"] for key, row in latest.items()} == {out.id: 1, f"{out.id}#1": -1}
    # after a restart, the request log holds every choice's text
    running, _ = start_server(lm_workspace, [f"tiny-lm={serve_lm}"], ui=False)
    try:
        again = requests.post(running.url + "/v1/feedback", json={"response_id": out.id, "rating": 1, "choice": 1},
                              timeout=30)
        assert again.status_code == 200, again.text
    finally:
        running.stop()
    assert registry.list_feedback(response_id=out.id)[-1]["response"] == texts[1]
