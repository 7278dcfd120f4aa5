"""llmkit.generate (text in, text out) against Hugging Face's generate() on tiny real models."""

from __future__ import annotations

import pytest

from llmkit.generate import generate
from llmkit.runtime.decoder import fit_context, generate_ids, get_decoder
from tests import tiny_lm
from tests.tiny_lm import CONTEXT, TEXT, hf_greedy, make_model

one_thread = pytest.fixture(scope="module", autouse=True)(tiny_lm.single_thread)
tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)
trained = pytest.fixture(scope="module")(tiny_lm.train_tiny)


def test_seed_is_deterministic(tokenizer):
    model = make_model(tokenizer, seed=6)
    def run(seed):
        return generate(model, tokenizer, "the", max_new_tokens=30, temperature=1.0, seed=seed).token_ids

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_k_one_is_greedy(tokenizer, trained):
    greedy = generate(trained, tokenizer, "the dog", max_new_tokens=30, temperature=0)
    topk1 = generate(trained, tokenizer, "the dog", max_new_tokens=30, temperature=1.3, top_k=1, seed=3)
    assert topk1.token_ids == greedy.token_ids and topk1.text == greedy.text


def test_stop_strings_and_streaming(tokenizer, trained):
    full = generate(trained, tokenizer, "the cat", max_new_tokens=40, temperature=0)
    assert full.finish_reason == "length" and len(full.token_ids) == 40 and full.prompt_tokens == 8
    # A 3-character stop string whose first occurrence is a few characters in, so text comes before it.
    stop = next(full.text[k:k + 3] for k in range(8, 30) if full.text.find(full.text[k:k + 3]) == k)
    pieces: list[str] = []
    res = generate(trained, tokenizer, "the cat", max_new_tokens=40, temperature=0, stop=["zzz", stop],
                   on_text=pieces.append)
    assert res.finish_reason == "stop"
    assert res.text == full.text[:full.text.find(stop)]
    assert "".join(pieces) == res.text and len(pieces) > 1
    assert 0 < res.first_token_seconds <= res.seconds
    pieces = []
    res = generate(trained, tokenizer, "the cat", max_new_tokens=40, temperature=0.7, seed=1,
                   on_text=pieces.append)
    assert "".join(pieces) == res.text


def test_eos_stops(tokenizer, trained):
    first = generate(trained, tokenizer, "the", max_new_tokens=5, temperature=0).token_ids[0]
    trained.config.eos_token_id = first
    try:
        res = generate(trained, tokenizer, "the", max_new_tokens=5, temperature=0)
    finally:
        trained.config.eos_token_id = 2
    assert res.token_ids == [first] and res.finish_reason == "stop"


def test_context_limit_truncates_prompt_from_the_left(tokenizer, trained):
    assert fit_context([1, 5, 6, 7, 8], 2, 5, bos_token_id=1) == ([1, 7, 8], 2)
    assert fit_context([5, 6, 7, 8], 2, 5) == ([6, 7, 8], 2)
    assert fit_context([1, 5, 6], 9, 5, bos_token_id=1) == ([6], 4)
    prompt = TEXT * 3  # 147 characters, context is 64
    res = generate(trained, tokenizer, prompt, max_new_tokens=10, temperature=0)
    assert res.prompt_tokens == CONTEXT - 10 and len(res.token_ids) == 10
    kept = [1] + tokenizer(prompt, add_special_tokens=False)["input_ids"][-(CONTEXT - 11):]
    assert res.token_ids == hf_greedy(trained, kept, 10)


@pytest.mark.parametrize("fast", [True, False])
def test_generation_goes_past_the_context_by_shifting_it(tokenizer, trained, fast, monkeypatch):
    # A model with a 64-token context asked for 150 tokens (the quick tour asks a 64-token model for 200): all
    # 150 come, the cache refilled with the last half of the context (BOS first) each time it is full; the prompt
    # is kept whole. Before, the prompt was cut to one token and 63 were generated.
    if not fast:
        monkeypatch.setattr("llmkit.runtime.decoder.get_decoder", lambda model: get_decoder(model, fast=False))
    prompt = [1] + tokenizer("the cat sat on", add_special_tokens=False)["input_ids"]
    out = list(generate_ids(trained, prompt, max_new_tokens=150, temperature=0))
    assert len(out) == 150
    full = CONTEXT + 1 - len(prompt)  # sampled until the cache is full (the last from the full cache's logits)
    assert out[:full] == hf_greedy(trained, prompt, full)
    window = [1] + (prompt + out[:full])[-(CONTEXT // 2 - 1):]
    assert out[full:full + CONTEXT // 2 + 1] == hf_greedy(trained, window, CONTEXT // 2 + 1)
    res = generate(trained, tokenizer, "the cat sat on", max_new_tokens=150, temperature=0)
    assert res.prompt_tokens == len(prompt) and len(res.token_ids) <= 150  # (EOS may end it)


def test_stop_token_ids_end_the_text_like_eos(tokenizer, trained):
    free = generate(trained, tokenizer, "ab", max_new_tokens=5, temperature=0)
    first = free.token_ids[0]
    stopped = generate(trained, tokenizer, "ab", max_new_tokens=5, temperature=0, stop_token_ids=[first])
    assert stopped.token_ids == [first] and stopped.finish_reason == "stop"


@pytest.mark.parametrize("template, says", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "SecurityError"),  # the sandbox stops it
    ("{{ raise_exception('Conversation roles must alternate user/assistant') }}", "roles must alternate"),
])
def test_a_chat_template_that_fails_is_one_line_about_the_model(tokenizer, template, says):
    # a hostile or strict template was `failed: SecurityError ...` (exit 1, as if llmkit had failed)
    from llmkit.errors import UserError
    from llmkit.generate import chat_prompt

    before, tokenizer.chat_template = tokenizer.chat_template, template
    try:
        with pytest.raises(UserError, match=r"^the model's chat template failed on these messages: ") as err:
            chat_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    finally:
        tokenizer.chat_template = before
    assert says in str(err.value)
