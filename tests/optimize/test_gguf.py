"""GGUF export: the file read back, the Modelfile, bad input; with llama.cpp: tokenization and greedy parity."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from llmkit.config import ExportConfig
from llmkit.errors import UserError
from llmkit.optimize.export import export
from llmkit.optimize.export_gguf import _permute_rope
from llmkit.registry import Registry
from llmkit.workspace import Workspace


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model) -> Workspace:
    return Workspace.open(lm_workspace)


@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0", "q4_0"])
def test_gguf_file_holds_the_model_and_tokenizer(ws, tiny_model, quant):
    model, _ = export("tiny-lm", ExportConfig(quant=quant, table=False, name=f"tiny-{quant}"), ws, Registry.for_workspace(ws.root))
    info = json.loads((model.path / "llmkit.json").read_text())
    reader = gguf.GGUFReader(str(model.path / info["gguf"]))
    fields = reader.fields
    config = json.loads((tiny_model.path / "config.json").read_text())

    def scalar(key):
        field = fields[key]
        return field.parts[field.data[0]][0]

    assert int(scalar("llama.block_count")) == config["num_hidden_layers"]
    assert int(scalar("llama.embedding_length")) == config["hidden_size"]
    assert int(scalar("llama.context_length")) == config["max_position_embeddings"]
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in fields["tokenizer.ggml.tokens"].data]
    assert len(tokens) == config["vocab_size"] and tokens[0] == "<|endoftext|>"
    names = {t.name: t for t in reader.tensors}
    assert len(names) == 2 + 9 * config["num_hidden_layers"]  # embeddings, final norm, 9 per block (tied head)
    expected = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}[quant]
    assert names["blk.0.ffn_up.weight"].tensor_type.name == expected
    assert names["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert dict(Registry.for_workspace(ws.root).parents(model.id))["exported_from"].id == tiny_model.id


def test_rope_permutation_interleaves_the_two_halves_of_each_head():
    w = np.arange(8)[:, None] * np.ones((1, 3))  # 2 heads of 4 rows: (0 1 | 2 3), (4 5 | 6 7)
    assert _permute_rope(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_modelfile_names_the_gguf_template_and_stops(ws):
    model, _ = export("tiny-lm", ExportConfig(quant="q8_0", table=False, name="tiny-ollama"), ws, Registry.for_workspace(ws.root))
    text = (model.path / "Modelfile").read_text()
    assert text.startswith("FROM ./model-q8_0.gguf\n")
    assert "<|assistant|>" in text and 'PARAMETER stop "<|end|>"' in text and "num_ctx 32" in text


def test_unsupported_architecture_is_named(ws):
    with pytest.raises(UserError, match="GGUF export supports LlamaForCausalLM.*BertModel"):
        export("minilm-l6", ExportConfig(table=False), ws, Registry.for_workspace(ws.root))
