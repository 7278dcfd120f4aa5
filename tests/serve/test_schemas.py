"""Every string a request carries is checked at the edge (request_base.Text): a lone UTF-16 surrogate is a 400
naming the field, on the real server, where it used to reach the tokenizer and come back a 500."""

from __future__ import annotations

import pytest
import requests

LONE = "\\ud800"  # as JSON text: an escaped lone surrogate, which json.loads turns into one
PAIR = "\\ud83d\\ude00"  # a valid escaped pair (an emoji), which must still be accepted


def _post(server, path: str, body: str) -> requests.Response:
    return requests.post(server.base_url + path, data=body.encode(), timeout=60,
                         headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", '{"model": "tiny-lm", "prompt": "ROMEO %s", "max_tokens": 2}', "prompt"),
    ("/v1/completions", '{"model": "tiny-lm", "prompt": ["%s"], "max_tokens": 2}', "prompt[0]"),
    ("/v1/completions", '{"model": "tiny-lm", "prompt": "A", "stop": ["x", "%s"], "max_tokens": 2}', "stop[1]"),
    ("/v1/completions", '{"model": "tiny-lm%s", "prompt": "A"}', "model"),
    ("/v1/chat/completions", '{"model": "tiny-lm", "messages": [{"role": "user", "content": "hi %s"}], "max_tokens": 2}',
     "messages[0].content"),
    ("/v1/chat/completions", '{"model": "tiny-lm", "max_tokens": 2, "messages": [{"role": "user", "content": '
     '[{"type": "text", "text": "ok"}, {"type": "text", "text": "%s"}]}]}', "messages[0].content[1].text"),
    ("/v1/embeddings", '{"model": "minilm-l6", "input": ["fine", "%s"]}', "input[1]"),
    ("/v1/classify", '{"model": "sms-clf", "input": "win %s"}', "input"),
    ("/v1/explain", '{"model": "sms-clf", "input": "win %s", "method": "occlusion"}', "input"),
    ("/v1/feedback", '{"response_id": "cmpl-x", "comment": "%s"}', "comment"),
])
def test_a_lone_surrogate_is_a_400_naming_the_field(server, path, body, param):
    r = _post(server, path, body.replace("%s", LONE))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    assert "unpaired surrogate" in err["message"] and err["message"].startswith(f"'{param}'"), err


def test_a_surrogate_pair_is_text_like_any_other(server):
    for path, body in [("/v1/completions", '{"model": "tiny-lm", "prompt": "ROMEO %s", "max_tokens": 2}'),
                       ("/v1/classify", '{"model": "sms-clf", "input": "win %s"}')]:
        r = _post(server, path, body.replace("%s", PAIR))
        assert r.status_code == 200, r.text
