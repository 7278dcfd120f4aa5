"""`llmkit import` of folders that are not what they seem: an encoder (BERT) that transformers also lists as a causal
LM, a misspelt config key, a misspelt model_type. Each is one line naming the real cause, before anything is written."""

from __future__ import annotations

import json

import pytest
from tests import tiny_lm

from llmkit.errors import UserError
from llmkit.models.importing import import_model
from llmkit.registry import Registry
from llmkit.workspace import Workspace


@pytest.fixture()
def ws(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    return ws, Registry.for_workspace(ws.root)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    tok = tiny_lm.char_tokenizer()
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    tiny_lm.make_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _refused(ws, folder) -> str:
    ws, reg = ws
    with pytest.raises(UserError) as err:
        import_model(str(folder), None, ws, reg)
    assert reg.list("model") == [] and not any((ws.root / "models").iterdir())
    return str(err.value)


def _with_config(tmp_path, source, name, edit) -> object:
    folder = tmp_path / name
    folder.mkdir()
    for f in source.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((source / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("head", ["BertForMaskedLM", "BertModel"])
def test_a_bert_is_refused_as_an_encoder_not_a_causal_lm(ws, tmp_path, head):
    # transformers maps model_type bert to BertLMHeadModel: a BertForMaskedLM imported as a causal LM (and generate
    # failed with KeyError: 'cache'); a BertModel was refused for tensors missing from its weights, the wrong reason
    import transformers

    tok = tiny_lm.char_tokenizer()
    config = transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)
    folder = tmp_path / head
    getattr(transformers, head)(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    message = _refused(ws, folder)
    assert f"{head} is an encoder" in message and "train classify" in message and "weights" not in message


def test_a_misspelt_config_key_is_named_with_the_key_meant(ws, tmp_path, llama_folder):
    # transformers kept 'num_hiden_layers' as an unread attribute and built 32 layers; the message was a
    # validation error about layer_types
    def typo(config):
        config["num_hiden_layers"] = config.pop("num_hidden_layers")
    message = _refused(ws, _with_config(tmp_path, llama_folder, "typo", typo))
    assert "unknown key 'num_hiden_layers' (did you mean 'num_hidden_layers'?)" in message


def test_a_misspelt_model_type_says_which_was_meant(ws, tmp_path, llama_folder):
    message = _refused(ws, _with_config(tmp_path, llama_folder, "typo-type", lambda c: c.update(model_type="lama")))
    assert "model_type 'lama'" in message and "did you mean 'llama'?" in message


def test_keys_older_transformers_wrote_are_not_taken_for_typos(ws, tmp_path, llama_folder):
    def legacy(config):
        config.update(rope_theta=10000.0, rope_scaling=None, torch_dtype="float32", pretraining_tp=1)
    ws_, reg = ws
    model, _ = import_model(str(_with_config(tmp_path, llama_folder, "legacy", legacy)), None, ws_, reg)
    assert model.lineage["architecture"] == "LlamaForCausalLM"


def test_a_folder_given_straight_to_a_command_without_a_tokenizer_or_with_broken_json_is_one_line(tmp_path, llama_folder):
    # without a tokenizer transformers 5 built an empty one: generate echoed the prompt, then blamed an "empty prompt";
    # a config.json that is not JSON was `failed: JSONDecodeError`, exit 1
    from llmkit.models.io import load_causal_lm, resolve_model
    from llmkit.models.kind import model_kind

    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (llama_folder / name).exists():
            (bare / name).write_bytes((llama_folder / name).read_bytes())
    with pytest.raises(UserError, match=r"no-tokenizer: no tokenizer \(none of tokenizer.json, "):
        load_causal_lm(str(bare))
    broken = _with_config(tmp_path, llama_folder, "broken-json", lambda config: None)
    (broken / "config.json").write_text('{"model_type": "llama",, }')
    with pytest.raises(UserError, match=r"broken-json/config.json:1: the model config is not valid JSON"):
        model_kind(resolve_model(str(broken)))
