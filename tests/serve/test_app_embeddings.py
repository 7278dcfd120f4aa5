"""A retrieval app's index from /v1/embeddings is the one sentence-transformers builds for the same model: mean-pooled,
L2-normalised vectors over the model's own input limit (`max_seq_length` of its sentence_bert_config.json, 256 for
minilm-l6, as vLLM serves it); a longer chunk is a 400 naming it, where sentence-transformers would cut it silently."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

from tests.serve.conftest import openai_client, start_server

SHAKESPEARE = "../shared/data/tinyshakespeare/input.txt"


@pytest.fixture(scope="module")
def url(lm_workspace):
    running, _ = start_server(lm_workspace, ["minilm-l6"])
    yield running.url
    running.stop()


def _chunk(tokenizer, text: str, tokens: int) -> str:
    """The start of `text` that the model reads as `tokens` tokens, [CLS] and [SEP] included."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens - 2]
    return tokenizer.decode(ids)


def test_vectors_equal_sentence_transformers_up_to_its_input_limit_and_longer_chunks_are_refused(url):
    st = pytest.importorskip("sentence_transformers")
    from llmkit.models.io import resolve_model

    model = st.SentenceTransformer(str(resolve_model("minilm-l6").path), device="cpu")
    assert model.max_seq_length == 256
    text = open(SHAKESPEARE, encoding="utf-8").read()[:20_000]
    fits = _chunk(model.tokenizer, text, 250)
    over = _chunk(model.tokenizer, text[3000:], 300)  # sentence-transformers embeds its first 256 tokens only
    assert len(model.tokenizer(over)["input_ids"]) > 256
    client = openai_client(url)

    assert requests.get(url + "/v1/models/minilm-l6", timeout=10).json()["context_length"] == 256  # was 512
    raw = requests.post(url + "/v1/embeddings", timeout=60, json={"model": "minilm-l6", "input": [fits, "First Citizen"],
                                                                  "encoding_format": "base64"}).json()
    served = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]])
    expected = model.encode([fits, "First Citizen"], normalize_embeddings=True)
    assert np.abs(served - expected).max() < 1e-5
    assert raw["usage"]["prompt_tokens"] == sum(len(model.tokenizer(t)["input_ids"]) for t in (fits, "First Citizen"))

    with pytest.raises(Exception) as refused:  # it was embedded whole: a vector sentence-transformers never gives
        client.embeddings.create(model="minilm-l6", input=[fits, over])
    assert refused.value.status_code == 400
    assert refused.value.body["code"] == "context_length_exceeded" and refused.value.body["param"] == "input[1]"
    assert "context is 256" in refused.value.body["message"]
