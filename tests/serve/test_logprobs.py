"""`logprobs` / `top_logprobs` on the real server with the `openai` client: the values are the log_softmax of the
model's own logits, computed here independently with transformers; streamed chunks carry the same values;
the completions endpoint answers in its legacy shape; bad values are 400s naming the field."""

from __future__ import annotations

import openai
import pytest
import requests
import torch

from llmkit.generate import chat_prompt, encode_prompt
from llmkit.models.io import load_causal_lm, resolve_model

TOL = 1e-4
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is there?"}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(server):
    """The served model loaded with transformers, and its tokenizer's id of each token's text (char-level)."""
    lm, tok = load_causal_lm(resolve_model("serve-lm", server.registry))
    ids = {tok.decode([i]): i for i in range(len(tok))}
    return lm.eval(), tok, ids


def _hf_logprobs(lm, prompt_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
    """(len(answer_ids), vocab): log_softmax of the logits that predicted each answer token, one forward."""
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([prompt_ids + answer_ids])).logits[0].float()
    return logits[len(prompt_ids) - 1:-1].log_softmax(-1)


def test_chat_logprobs_are_the_models_log_softmax_token_by_token(client, reference):
    lm, tok, ids = reference
    out = client.chat.completions.create(model="tiny-lm", messages=MESSAGES, max_tokens=24, temperature=0,
                                         logprobs=True, top_logprobs=5)
    choice = out.choices[0]
    content = choice.logprobs.content
    assert "".join(t.token for t in content) == choice.message.content
    assert len(content) == out.usage.completion_tokens or choice.finish_reason == "stop"  # an end token isn't text
    prompt, _ = chat_prompt(tok, MESSAGES)
    prompt_ids = encode_prompt(tok, prompt)
    assert len(prompt_ids) == out.usage.prompt_tokens
    answer = [ids[t.token] for t in content]
    expected = _hf_logprobs(lm, prompt_ids, answer)
    for pos, (entry, want) in enumerate(zip(content, expected, strict=True)):
        assert abs(entry.logprob - float(want[answer[pos]])) < TOL, (pos, entry.token)
        assert bytes(entry.bytes) == entry.token.encode()
        top = entry.top_logprobs
        assert len(top) == 5
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        assert top[0].token == entry.token and abs(top[0].logprob - entry.logprob) < 1e-6  # greedy: the argmax
        best = want.topk(5)
        assert [ids[t.token] for t in top] == best.indices.tolist()
        assert all(abs(t.logprob - float(v)) < TOL for t, v in zip(top, best.values, strict=True))


def test_streamed_logprobs_equal_the_whole_answers(client):
    kwargs = dict(model="tiny-lm", messages=MESSAGES, max_tokens=20, temperature=0, logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in whole] and len(whole) > 5
    for a, b in zip(streamed, whole, strict=True):
        assert abs(a.logprob - b.logprob) < TOL
        assert [t.token for t in a.top_logprobs] == [t.token for t in b.top_logprobs]
    for c in chunks:  # each chunk carries the log-probabilities of its own text
        if c.choices and c.choices[0].logprobs:
            assert "".join(t.token for t in c.choices[0].logprobs.content) == (c.choices[0].delta.content or "")


def test_completions_logprobs_in_the_legacy_shape(client, reference):
    lm, tok, ids = reference
    out = client.completions.create(model="tiny-lm", prompt="ROMEO:\n", max_tokens=16, temperature=0, logprobs=3)
    choice = out.choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.tokens) == 16
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(16)]
    answer = [ids[t] for t in lp.tokens]
    expected = _hf_logprobs(lm, encode_prompt(tok, "ROMEO:\n"), answer)
    for pos, (token, value, top) in enumerate(zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True)):
        assert abs(value - float(expected[pos, answer[pos]])) < TOL
        assert token in top and 3 <= len(top) <= 4  # the top 3, and the sampled token (OpenAI's logprobs + 1)
        assert max(top.values()) == pytest.approx(value, abs=1e-6)  # greedy
    chunks = list(client.completions.create(model="tiny-lm", prompt="ROMEO:\n", max_tokens=16, temperature=0,
                                            logprobs=3, stream=True))
    parts = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for p in parts for t in p.tokens] == lp.tokens
    assert [o for p in parts for o in p.text_offset] == lp.text_offset  # offsets run on across chunks
    plain = client.completions.create(model="tiny-lm", prompt="ROMEO:\n", max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None  # not asked, not computed


@pytest.mark.parametrize("path, extra, param", [
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
    ("/v1/completions", {"logprobs": 6}, "logprobs"),
    ("/v1/completions", {"logprobs": -1}, "logprobs"),
    ("/v1/completions", {"logprobs": 2, "echo": True}, "echo"),
])
def test_bad_logprobs_values_are_400s_naming_the_field(server, path, extra, param):
    body = {"model": "tiny-lm", "max_tokens": 2, **extra}
    body.update({"messages": MESSAGES} if "chat" in path else {"prompt": "A"})
    r = requests.post(server.base_url + path, json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"], error


def test_a_byte_level_token_holding_part_of_a_character_has_its_own_bytes(smollm2):
    """SmolLM2's byte-level BPE splits some characters over tokens: each token's `bytes` are its own (not the
    U+FFFD its text shows), so a client joining them gets the text back."""
    from llmkit.models.io import load_tokenizer_for
    from llmkit.serve.handling import token_text

    tok = load_tokenizer_for(smollm2)
    text = "naïve 😀 测试"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [token_text(tok, i) for i in ids]
    assert any("\ufffd" in t for t, _ in pieces), "expected a token holding part of a character"
    assert b"".join(raw for _, raw in pieces).decode() == text
