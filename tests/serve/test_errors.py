"""What a new user's first wrong requests get back from the real server: one line saying what is wrong and how to fix
it, in OpenAI's error shape — a body sent as a form or as text (curl -d without -H), JSON that is not an object, a
GET on a POST route, an empty list of content parts, token ids where text goes, a blank comment as the only feedback;
and `llmkit serve` arguments that name no model or no name (NAME=MODEL with a side missing)."""

from __future__ import annotations

import re

import pytest
import requests

from tests.serve.conftest import start_server
from tests.serve.test_limits import _error

CHAT = {"model": "tiny-lm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


@pytest.mark.parametrize(("headers", "says"), [
    ({"Content-Type": "text/plain"}, "sent as Content-Type 'text/plain', which is not JSON"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, "'application/x-www-form-urlencoded', which is not JSON"),
    ({}, "without a Content-Type"),
])
def test_a_json_body_sent_without_the_json_content_type_says_which_header_to_send(server, headers, says):
    """It said "Input should be a valid dictionary or object to extract fields from"; the body is not read as JSON
    (a web page's plain form post must not reach the models), so the answer says which header to send."""
    import json

    r = requests.post(server.base_url + "/v1/chat/completions", data=json.dumps(CHAT).encode(), headers=headers,
                      timeout=30)
    if not headers:  # requests sends no Content-Type for bytes
        assert "content-type" not in {k.lower() for k in r.request.headers}
    err = _error(r, 400, code="invalid_value")
    assert says in err["message"] and "Content-Type: application/json" in err["message"], err


@pytest.mark.parametrize(("body", "kind"), [(b"[1, 2]", "a JSON array"), (b"null", "JSON null"),
                                            (b'"hello"', "a JSON string"), (b"5", "a JSON number")])
def test_json_that_is_not_an_object_is_named(server, body, kind):
    err = _error(requests.post(server.base_url + "/v1/completions", data=body,
                               headers={"Content-Type": "application/json"}, timeout=30), 400, code="invalid_value")
    assert err["message"].startswith(f"the request body is {kind}, not a JSON object; send a JSON object"), err


def test_a_wrong_method_names_the_one_to_use(server):
    """It said "Method Not Allowed", the methods only in a header."""
    err = _error(requests.get(server.base_url + "/v1/chat/completions", timeout=30), 405, code="method_not_allowed")
    assert err["message"] == "GET is not allowed on /v1/chat/completions; use POST (see /docs)", err
    err = _error(requests.delete(server.base_url + "/v1/models", timeout=30), 405)
    assert "use GET" in err["message"], err


def test_an_empty_list_of_content_parts_is_refused_not_answered(server):
    """`content: []` was answered as an empty user turn; OpenAI refuses it."""
    body = {**CHAT, "messages": [{"role": "user", "content": []}]}
    err = _error(requests.post(server.base_url + "/v1/chat/completions", json=body, timeout=30), 400,
                 "messages[0].content")
    assert "at least 1 item" in err["message"]
    ok = {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}
    assert requests.post(server.base_url + "/v1/chat/completions", json=ok, timeout=60).status_code == 200


@pytest.mark.parametrize("route, model", [("/v1/embeddings", "minilm-l6"), ("/v1/classify", "sms-clf")])
def test_token_ids_as_input_are_refused_in_plain_words(server, route, model):
    """OpenAI's embeddings take token ids; here it said "Input should be a valid string"."""
    for ids in ([101, 2023], [[101, 2023]]):
        err = _error(requests.post(server.base_url + route, json={"model": model, "input": ids}, timeout=30), 400,
                     "input")
        assert err["message"] == "'input': token-id inputs are not supported here; send the input as text", err


def test_feedback_of_a_blank_comment_alone_is_refused(server):
    """A blank comment with no rating or correction was stored as a row that says nothing."""
    out = requests.post(server.base_url + "/v1/chat/completions", json=CHAT, timeout=60).json()
    before = len(server.registry.list_feedback())
    for comment in ("", "   "):
        err = _error(requests.post(server.base_url + "/v1/feedback", json={"response_id": out["id"], "comment": comment},
                                   timeout=30), 400, "rating", "invalid_value")
        assert "(1, 0 or -1)" in err["message"] and "not blank" in err["message"], err
    assert len(server.registry.list_feedback()) == before
    ok = requests.post(server.base_url + "/v1/feedback", json={"response_id": out["id"], "comment": "too short"},
                       timeout=30)
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(("spec", "says"), [
    ("x=", "MODEL 'x=': nothing after '='"),  # it served the current folder: ". is not a Hugging Face model folder"
    ("", "MODEL '': it is empty"),
    ("=serve-lm", "MODEL '=serve-lm': no name before '='"),  # served as serve-lm, the '=' silently dropped
    ("my lm=serve-lm", "the name 'my lm' holds a space"),
])
def test_serve_arguments_missing_a_side_are_refused_before_any_model_loads(lm_workspace, serve_lm, spec, says):
    from llmkit.config import ServeConfig
    from llmkit.errors import UserError
    from llmkit.registry import Registry
    from llmkit.serve import build_app
    from llmkit.workspace import Workspace

    ws = Workspace.open(lm_workspace)
    with pytest.raises(UserError, match=re.escape(says)):
        build_app(ServeConfig(models=[spec], port=0), ws, Registry.for_workspace(ws.root))
    with pytest.raises(UserError, match=re.escape("--adapter 'support=': nothing after '='")):
        build_app(ServeConfig(models=[serve_lm], adapters=["support="], port=0), ws, Registry.for_workspace(ws.root))


def test_the_cli_says_a_missing_model_after_the_name_in_one_line(cli_here, lm_workspace):
    out = cli_here("serve", "chat=", "--port", "0", workspace=lm_workspace)
    assert out.returncode == 2 and "MODEL 'chat=': nothing after '='" in out.stderr, out
    assert len(out.stderr.strip().splitlines()) == 1 and "loaded" not in out.stdout, out


def test_a_served_name_with_a_slash_has_its_card(lm_workspace, serve_lm):
    """`org/model` names (as vLLM serves them) answered chat but GET /v1/models/org/model was "no such route", so
    the openai client's models.retrieve failed."""
    from tests.serve.conftest import openai_client

    running, _ = start_server(lm_workspace, [f"org/tiny={serve_lm}"], max_batch=2, workers=1)
    try:
        card = openai_client(running.url).models.retrieve("org/tiny")
        assert card.id == "org/tiny"
        _error(requests.get(running.url + "/v1/models/org/nope", timeout=30), 404, "model", "model_not_found")
    finally:
        running.stop()


def test_models_named_in_the_config_file_are_served_without_arguments(cli_here, lm_workspace, tmp_path):
    """serve.models is a config key, but `llmkit serve --config F` said "missing argument 'models'": the models
    named there now reach the server (here one with nothing after '=', refused as on the command line)."""
    config = tmp_path / "serve.yaml"
    config.write_text("serve:\n  models: [chat=]\n  port: 0\n")
    out = cli_here("serve", "--config", str(config), workspace=lm_workspace)
    assert out.returncode == 2 and "MODEL 'chat=': nothing after '='" in out.stderr, out
    out = cli_here("serve", workspace=lm_workspace)
    assert out.returncode == 2, out
    assert out.stderr.strip() == ("error: name at least one model to serve: llmkit serve MODEL [MODEL...], or "
                                  "serve.models in --config"), out


@pytest.mark.parametrize(("route", "body", "field", "close"), [
    ("/v1/chat/completions", {**CHAT, "max_token": 3}, "max_token", "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "temprature": 0.2}, "temprature", "temperature"),
    ("/v1/completions", {"model": "tiny-lm", "prompt": "Hi", "max_tokens": 2, "presense_penalty": 0.5}, "presense_penalty",
     "presence_penalty"),
])
def test_a_field_one_typo_from_a_known_one_is_named_with_the_field_it_meant(server, route, body, field, close):
    """`max_token: 3` was ignored and the answer ran to the default length without a word."""
    err = _error(requests.post(server.base_url + route, json=body, timeout=30), 400, code="invalid_value")
    assert err["message"] == f"unknown field '{field}': did you mean '{close}'?" and err["param"] == field, err


def test_other_unknown_fields_stay_ignored_as_other_servers_extensions(server):
    """Clients send fields of OpenAI's or vLLM's that this server does not read (`user`, `metadata`, `store`, vLLM's
    `min_tokens`, 0.8 alike with `max_tokens`): those are still answered."""
    body = {**CHAT, "user": "u1", "metadata": {"k": "v"}, "store": False, "min_tokens": 1, "service_tier": "auto"}
    r = requests.post(server.base_url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
