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
    # the tied head stays at 8 bits under q4_0, as llama.cpp keeps its head above 4 bits (q6_K)
    head = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q8_0"}[quant]
    assert names["token_embd.weight"].tensor_type.name == head
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


# -- with llama.cpp (llama-cpp-python, built portable by the Makefile) --------------------------------


@pytest.fixture(scope="module")
def bpe_model(ws, shared_data: Path):
    """A tiny byte-level-BPE model with a 160-token context, trained long enough to have preferences."""
    from llmkit.config import DataConfig
    from llmkit.data import prepare
    from llmkit.train import pretrain
    from tests.conftest import tiny_config

    reg = Registry.for_workspace(ws.root)
    source = ws.root / "gguf-text.txt"
    source.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:60_000])
    prepare(DataConfig(inputs=[str(source)], name="gguf-bpe", task="lm", tokenizer="bpe:320", doc_split="blank-line"), ws, reg)
    return pretrain(tiny_config(data="gguf-bpe", name="gguf-bpe-lm", context=160, max_steps=400, batch_size=8,
                                eval_every=400, checkpoint_every=400), ws, reg)


def _llama(model, quant: str, ws):
    from llmkit.runtime.llama_cpp import LlamaCppBackend

    exported, _ = export(model.name, ExportConfig(quant=quant, table=False, name=f"{model.name}-{quant}"), ws,
                         Registry.for_workspace(ws.root))
    from llmkit.models.io import resolve_model

    return LlamaCppBackend(resolve_model(exported.id, Registry.for_workspace(ws.root)))


TEXT = "ROMEO:\nWhat say'st thou, my lord? 'Tis nine o'clock;  and  the night is young.\n\nJULIET: Ay!"


@pytest.mark.parametrize("which", ["char", "bpe"])
def test_llama_cpp_tokenizes_exactly_like_the_model(ws, tiny_model, bpe_model, which):
    from llmkit.models.io import load_tokenizer_for

    model = tiny_model if which == "char" else bpe_model
    backend = _llama(model, "f32", ws)
    ours = load_tokenizer_for(model)(TEXT, add_special_tokens=False)["input_ids"]
    theirs = backend.llm.tokenize(TEXT.encode(), add_bos=False, special=False)
    assert theirs == ours
    assert backend.llm.detokenize(theirs).decode() == TEXT
    assert backend.llm.tokenize("tab\there, é".encode(), add_bos=False, special=False)  # unseen characters do not crash


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["f32", "f16", "q8_0"])
def test_llama_cpp_greedy_output_equals_pytorch_over_128_tokens(ws, bpe_model, quant):
    from llmkit.generate import encode_prompt
    from llmkit.models.io import load_causal_lm
    from llmkit.runtime.decoder import generate_ids
    from llmkit.runtime.llama_cpp import greedy

    lm, tok = load_causal_lm(bpe_model)
    prompt = encode_prompt(tok, "KING RICHARD:\n")
    ours = list(generate_ids(lm, prompt, max_new_tokens=128, temperature=0))
    theirs = greedy(_llama(bpe_model, quant, ws), prompt, 128)
    assert len(ours) == len(theirs) == 128
    if quant != "q8_0" or theirs == ours:
        assert theirs == ours
        return
    # q8_0 rounds weights and activations to 8 bits, so the two greedy paths may part where the model's top two
    # tokens nearly tie (0.02 nats apart at token 96 of 128 for a model trained on another CPU; the logits' spread is
    # ~1.8): they must agree for a long stretch and part only at such a tie, never where the model is sure.
    import torch

    i = next(k for k, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b)
    with torch.no_grad():
        logits = lm(torch.tensor([prompt + ours[:i]])).logits[0, -1]
    gap = float(logits[ours[i]] - logits[theirs[i]])
    assert i >= 64 and gap < 0.1, (i, gap)


def test_llama_cpp_batch_decodes_many_sequences_like_one_at_a_time(ws, bpe_model):
    """LlamaCppBatch (serving): 24 prompts of different lengths share one context; their prefill spans
    several decodes (over 512 tokens in all), slots are reused after release, and every sequence's greedy
    continuation equals the one-sequence backend's."""
    from llmkit.generate import encode_prompt
    from llmkit.models.io import load_tokenizer_for, resolve_model
    from llmkit.runtime.llama_cpp import LlamaCppBatch, greedy

    single = _llama(bpe_model, "f32", ws)
    model = resolve_model(f"{bpe_model.name}-f32", Registry.for_workspace(ws.root))
    tok = load_tokenizer_for(bpe_model)
    words = TEXT.split()
    prompts = [encode_prompt(tok, " ".join(words[: 3 + i % 12]) + "\n" * (i % 3)) for i in range(24)]
    assert sum(map(len, prompts)) > 512
    expected = [greedy(single, p, 12) for p in prompts]
    batch = LlamaCppBatch(model, max_batch=16)
    try:
        for first, half in ((0, prompts[:16]), (16, prompts[16:])):  # the second round reuses released ids
            states, logits = batch.prefill_many(half, [len(p) + 12 for p in half])
            out = [[int(t)] for t in logits.argmax(-1)]
            for _ in range(11):
                logits = batch.step(states, [o[-1] for o in out])
                for o, row in zip(out, logits, strict=True):
                    o.append(int(row.argmax()))
            assert out == expected[first: first + len(half)]
            for state in states:
                batch.release(state)
        assert sorted(batch.free) == list(range(16))
    finally:
        batch.close()


def test_generate_and_chat_run_a_gguf_on_llama_cpp(ws, tiny_model):
    """generate and chat refused a GGUF export ("use the model it was exported from") while serve, eval and
    bench-model ran it: at f32 the GGUF's greedy answer is the torch model's."""
    pytest.importorskip("llama_cpp")
    from tests.conftest import run_cli

    export("tiny-lm", ExportConfig(quant="f32", table=False, name="tiny-gen-f32"), ws, Registry.for_workspace(ws.root))
    args = ["--prompt", "ROMEO:", "--max-new-tokens", "12", "--temperature", "0", "--json"]
    on_gguf = run_cli("generate", "tiny-gen-f32", *args, workspace=ws.root)
    on_torch = run_cli("generate", "tiny-lm", *args, workspace=ws.root)
    assert on_gguf.returncode == 0 and on_torch.returncode == 0, on_gguf.stderr + on_torch.stderr
    assert json.loads(on_gguf.stdout)["text"] == json.loads(on_torch.stdout)["text"]
    import os
    import subprocess
    import sys

    chatted = subprocess.run([sys.executable, "-m", "llmkit", "chat", "tiny-gen-f32", "--max-new-tokens", "6",
                              "--temperature", "0"], input="hello\n", capture_output=True, text=True, timeout=300,
                             env={**os.environ, "LLMKIT_HOME": str(ws.root)})
    assert chatted.returncode == 0 and "model> " in chatted.stdout, chatted.stderr


def test_the_gguf_carries_the_chat_template_the_turn_end_and_the_special_ids(ws, tiny_model):
    # llama.cpp and Ollama read these from the GGUF alone: a missing template sends raw prompts, a missing end-of-turn
    # token (llmkit's <|end|> is not its EOS <|endoftext|>) generates past the answer, a wrong EOS never stops
    from llmkit.models.io import load_tokenizer_for
    from llmkit.models.pretrained import chat_template_of

    model, _ = export("tiny-lm", ExportConfig(quant="f16", table=False, name="tiny-meta"), ws, Registry.for_workspace(ws.root))
    fields = gguf.GGUFReader(str(model.path / "model-f16.gguf")).fields

    def value(key):
        field = fields[key]
        part = field.parts[field.data[0]]
        return bytes(part).decode() if field.types[0] == gguf.GGUFValueType.STRING else part[0]

    config = json.loads((tiny_model.path / "config.json").read_text())
    tok = load_tokenizer_for(tiny_model)
    assert value("tokenizer.chat_template") == chat_template_of(tiny_model.path) is not None
    assert int(value("tokenizer.ggml.eot_token_id")) == tok.convert_tokens_to_ids("<|end|>") != config["eos_token_id"]
    assert int(value("tokenizer.ggml.eos_token_id")) == config["eos_token_id"]
    assert int(value("tokenizer.ggml.bos_token_id")) == config["bos_token_id"]
    assert not value("tokenizer.ggml.add_bos_token")  # llmkit's prompts carry their own bos
    assert (model.path / "chat_template.jinja").exists() == (tiny_model.path / "chat_template.jinja").exists()


def test_llama_cpp_tokenizes_a_character_vocabulary_beyond_ascii_one_token_per_character(tmp_path):
    # each character of a char-level vocabulary is its UTF-8 bytes joined by merges: without them "日" is 3 byte tokens
    pytest.importorskip("llama_cpp")
    import llama_cpp
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from llmkit.models.io import Model
    from llmkit.optimize.export_gguf import export_gguf_folder
    from tests import tiny_lm

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ch in "abc é日本語ü€":
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    folder = tmp_path / "char-model"
    tiny_lm.make_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    info = export_gguf_folder(Model(folder, "char-model"), tmp_path / "out", "f32", {})
    llm = llama_cpp.Llama(model_path=info["gguf"], vocab_only=True, verbose=False)
    text = "日本語 é ü€ abc"
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok(text, add_special_tokens=False)["input_ids"]
