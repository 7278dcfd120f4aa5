"""GGUF export of the Llama family beyond Llama itself (issue 18 item 3): Mistral, Qwen2 (q/k/v biases), Qwen3
(per-head q/k norms, head_dim apart from hidden/heads), Llama with linear and Llama 3 RoPE scaling; tied and
untied heads, GQA. Each is a tiny random model built here with transformers, exported with llmkit's writer and
run by real llama.cpp (llama-cpp-python): its logits over a prompt match transformers', and greedy decoding
agrees. The same checks fail when the writer gets the RoPE layout or the pre-tokenizer wrong (tested too)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from llmkit.errors import UserError
from llmkit.models.io import Model
from llmkit.optimize import gguf_arch
from llmkit.optimize.export_gguf import export_gguf_folder

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Digits, blank lines, punctuation before a newline, a capitalised contraction: where Qwen2's split and GPT-2's differ.
TEXT = "In 2024, 1,234 cats sat.\n\nTHEY'LL say: 'Tis 42!\n  And  then\tthe end...\n"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    from tests.tiny_lm import single_thread

    yield from single_thread()


def _train_tokenizer(split: str, shared_data: Path):
    """A byte-level BPE split by `split` and then into bytes, like Qwen2's and Llama 3's tokenizers, trained here."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()[:30_000]
    tok.train_from_iterator([text, TEXT * 20], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


@pytest.fixture(scope="module")
def qwen_tokenizer(shared_data: Path):
    return _train_tokenizer(gguf_arch._QWEN2_SPLIT, shared_data)


def _config(kind: str, vocab: int, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[kind]
    base = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=2,
                pad_token_id=0, initializer_range=0.2)
    return cls(**{**base, **overrides})


CASES = {
    "qwen2-tied": ("qwen2", dict(tie_word_embeddings=True, rope_theta=1e6)),
    "qwen2-untied": ("qwen2", dict(tie_word_embeddings=False)),
    "qwen3-tied": ("qwen3", dict(tie_word_embeddings=True, head_dim=32)),
    "qwen3-untied": ("qwen3", dict(tie_word_embeddings=False, head_dim=16, num_key_value_heads=1)),
    "mistral": ("mistral", dict(tie_word_embeddings=False, sliding_window=4096)),
    "llama-linear": ("llama", dict(rope_scaling={"rope_type": "linear", "factor": 4.0})),
    "llama3": ("llama", dict(tie_word_embeddings=False, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16})),
    "llama-bias": ("llama", dict(attention_bias=True)),
}


def _build(kind: str, overrides: dict, tokenizer, folder: Path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(kind, len(tokenizer), **overrides)).eval()
    with torch.no_grad():  # biases and norms start at 0 and 1: random, so that a misplaced one shows
        for name, p in model.named_parameters():
            if name.endswith(("bias", "norm.weight", "layernorm.weight")):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def built(qwen_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf-archs")
    cache = {}

    def get(case: str):
        if case not in cache:
            kind, overrides = CASES[case]
            cache[case] = (_build(kind, overrides, qwen_tokenizer, root / case), root / case)
        return cache[case]
    return get


def _export(folder: Path, quant: str, target: Path) -> Path:
    info = export_gguf_folder(Model(folder, folder.name), target, quant, {})
    return Path(info["gguf"])


def _llama(path: Path):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, logits_all=True, verbose=False, seed=0,
                           type_k=0, type_v=0)  # an f32 KV cache: its default f16 alone costs ~1e-3


def _ids(tokenizer) -> list[int]:
    return tokenizer(TEXT, add_special_tokens=False)["input_ids"]


def _compare(model, gguf: Path, ids: list[int]) -> tuple[float, float]:
    """Max |logit difference| over every position, and the logits' scale (max |logit|)."""
    llm = _llama(gguf)
    llm.eval(ids)
    theirs = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].double().numpy()
    return float(np.abs(theirs - ours).max()), float(np.abs(ours).max())


def _greedy_llama_cpp(gguf: Path, ids: list[int], n: int) -> list[int]:
    llm, out = _llama(gguf), []
    llm.eval(ids)
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out


def _greedy_transformers(model, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n, pad_token_id=0)
    return out[0, len(ids):].tolist()


# f32: llama.cpp and transformers differ by float rounding only (measured ~2e-6 of the logits' scale); f16 weights
# round every matrix to 11 bits (measured 1-4e-3).
TOLERANCE = {"f32": 1e-4, "f16": 1e-2}


@pytest.mark.parametrize("quant", ["f32", "f16"])
@pytest.mark.parametrize("case", list(CASES))
def test_llama_cpp_logits_and_greedy_tokens_match_transformers(built, qwen_tokenizer, case, quant, tmp_path):
    model, folder = built(case)
    ids = _ids(qwen_tokenizer)
    gguf = _export(folder, quant, tmp_path / quant)
    diff, scale = _compare(model, gguf, ids)
    print(f"{case} {quant}: max |logit diff| {diff:.2e}, logits' scale {scale:.2f}, relative {diff / scale:.1e}")
    assert diff < TOLERANCE[quant] * scale
    assert _greedy_llama_cpp(gguf, ids[:12], 8) == _greedy_transformers(model, ids[:12], 8)


@pytest.mark.parametrize("case, wrong", [("qwen2-untied", {"permute_qk": True}), ("mistral", {"permute_qk": False}),
                                         ("qwen3-tied", {"permute_qk": True})])
def test_the_wrong_rope_layout_is_caught(built, qwen_tokenizer, case, wrong, monkeypatch, tmp_path):
    """The parity check above can fail: Qwen written with llama's pair-wise RoPE layout, or Mistral without it,
    loads and runs in llama.cpp but computes something else."""
    model, folder = built(case)
    arch = model.config.architectures[0]
    monkeypatch.setitem(gguf_arch.ARCHITECTURES, arch, dataclasses.replace(gguf_arch.ARCHITECTURES[arch], **wrong))
    diff, scale = _compare(model, _export(folder, "f32", tmp_path / "wrong"), _ids(qwen_tokenizer))
    print(f"{case} with {wrong}: relative {diff / scale:.1e}")
    assert diff > 100 * TOLERANCE["f32"] * scale


@pytest.mark.parametrize("case", ["llama-linear", "llama3"])
def test_rope_scaling_is_what_the_gguf_computes(built, qwen_tokenizer, case, tmp_path):
    """The same weights without the scaling give logits far from llama.cpp's: the GGUF carries the scaling (a GGUF
    that dropped it would fail the parity test)."""
    from transformers import AutoModelForCausalLM

    model, folder = built(case)
    ids = _ids(qwen_tokenizer)
    plain_config = model.config.to_dict() | {"rope_scaling": None, "rope_parameters": {"rope_type": "default",
                                                                                        "rope_theta": 10000.0}}
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(plain_config)).eval()
    plain.load_state_dict(model.state_dict())
    llm = _llama(_export(folder, "f32", tmp_path / "f32"))
    llm.eval(ids)
    with torch.no_grad():
        unscaled = plain(torch.tensor([ids])).logits[0].numpy()
    scale = float(np.abs(unscaled).max())
    diff = float(np.abs(np.asarray(llm.scores[: len(ids)]) - unscaled).max())
    print(f"{case} against no scaling: relative {diff / scale:.1e}")
    assert diff > 100 * TOLERANCE["f32"] * scale


def _gguf_field(path: Path, key: str):
    import gguf

    field = gguf.GGUFReader(str(path)).fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types[0] == gguf.GGUFValueType.STRING else value[0]


@pytest.mark.parametrize("split, pre", [("qwen2", "qwen2"), ("llama3", "llama-bpe")])
def test_llama_cpp_tokenizes_like_transformers_with_the_splitting_the_tokenizer_names(split, pre, shared_data, tmp_path,
                                                                                     monkeypatch):
    import llama_cpp

    regex = gguf_arch._QWEN2_SPLIT if split == "qwen2" else gguf_arch._LLAMA3_SPLIT
    tokenizer = _train_tokenizer(regex, shared_data)
    kind = "qwen2" if split == "qwen2" else "llama"
    _build(kind, {"num_hidden_layers": 1}, tokenizer, tmp_path / "model")

    def tokenize(target: str) -> tuple[list[int], str]:
        gguf = _export(tmp_path / "model", "f16", tmp_path / target)
        llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
        return llm.tokenize(TEXT.encode(), add_bos=False, special=False), _gguf_field(gguf, "tokenizer.ggml.pre")

    ours = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert tokenize("right") == (ours, pre)
    monkeypatch.setitem(gguf_arch.PRE_TOKENIZERS, regex, "gpt-2")  # GPT-2's splitting: other tokens for this text
    theirs, written = tokenize("wrong")
    assert written == "gpt-2" and theirs != ours


def test_mistral_sliding_window_bounds_the_context(qwen_tokenizer, tmp_path):
    """Mistral 7B v0.1 attends within 4,096 of 32,768 positions; llama.cpp's llama attends to all of them. Up
    to the window both compute the same, so the window is the context the GGUF and the Modelfile state."""
    _build("mistral", {"sliding_window": 32}, qwen_tokenizer, tmp_path / "model")
    gguf = _export(tmp_path / "model", "f16", tmp_path / "out")
    assert int(_gguf_field(gguf, "llama.context_length")) == 32
    assert "num_ctx 32" in (tmp_path / "out" / "Modelfile").read_text()
    # and the export says so (the context became the window without a word)
    from rich.console import Console

    from llmkit.config import ExportConfig
    from llmkit.optimize.export import export
    from llmkit.registry import Registry
    from llmkit.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    console = Console(record=True, width=400)
    export(str(tmp_path / "model"), ExportConfig(format="gguf", quant="f16", table=False), ws,
           Registry.for_workspace(ws.root), console)
    assert "context: 32 tokens, model's sliding window (of 128)" in console.export_text()


@pytest.mark.parametrize("kind, overrides, says", [
    ("phi3", {}, "Phi3ForCausalLM: use --format onnx"),
    ("qwen3", {"attention_bias": True}, "cannot write attention_bias"),
    ("qwen2", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}},
     "cannot write rope scaling 'yarn'"),
])
def test_what_the_writer_cannot_write_is_one_line_and_nothing_written(qwen_tokenizer, kind, overrides, says, tmp_path):
    from transformers import Phi3Config, Phi3ForCausalLM

    folder = tmp_path / "model"
    if kind == "phi3":
        Phi3ForCausalLM(Phi3Config(vocab_size=len(qwen_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, pad_token_id=0)).save_pretrained(folder)
        qwen_tokenizer.save_pretrained(folder)
    else:
        _build(kind, {"num_hidden_layers": 1, **overrides}, qwen_tokenizer, folder)
    with pytest.raises(UserError) as err:
        _export(folder, "f16", tmp_path / "out")
    message = str(err.value)
    assert "\n" not in message and says in message, message
    if kind == "phi3":
        assert message.startswith("GGUF export supports LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM")
    assert not (tmp_path / "out").exists()


def test_an_unknown_split_regex_is_refused(qwen_tokenizer, tmp_path):
    """A byte-level BPE split by a regex llama.cpp has no pre-tokenizer for would load and mis-tokenize: refused."""
    import json

    folder = tmp_path / "model"
    _build("qwen2", {"num_hidden_layers": 1}, qwen_tokenizer, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\w+|\W"
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match="pre_tokenizer is another: use llama.cpp's convert_hf_to_gguf.py"):
        _export(folder, "f16", tmp_path / "out")


def test_rope_settings_read_alike_from_old_and_new_configs():
    """Checkpoints saved before transformers 5 keep `rope_scaling` ("type" or "rope_type") and `rope_theta` at the top
    level (Llama 3.1's config.json); transformers 5 writes `rope_parameters`. The writer reads both the same way."""
    llama31 = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    old = {"rope_scaling": {**llama31, "rope_type": "llama3"}, "rope_theta": 500000.0, "hidden_size": 2048,
           "num_attention_heads": 32}
    new = {"rope_parameters": {**llama31, "rope_type": "llama3", "rope_theta": 500000.0}, "hidden_size": 2048,
           "num_attention_heads": 32}
    assert gguf_arch.rope_parameters(old) == gguf_arch.rope_parameters(new)
    factors = gguf_arch.llama3_rope_factors(old)
    assert factors.shape == (32,) and factors[0] == 1.0 and factors[-1] == 8.0  # high frequencies kept, low ones / 8
    assert gguf_arch.rope_parameters({"rope_scaling": {"type": "linear", "factor": 2.0}})["rope_type"] == "linear"
    assert gguf_arch.rope_parameters({})["rope_type"] == "default"


def test_an_untied_head_stays_at_8_bits_under_q4_0_and_the_norm_epsilon_and_ids_are_the_models(built, tmp_path):
    # the head decides every token (llama.cpp keeps it above 4 bits); an untied model's embedding is not its head
    import gguf

    _, folder = built("qwen2-untied")
    path = _export(folder, "q4_0", tmp_path / "q4")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert (types["output.weight"], types["token_embd.weight"], types["blk.0.ffn_up.weight"]) == ("Q8_0", "Q4_0", "Q4_0")
    assert float(_gguf_field(path, "qwen2.attention.layer_norm_rms_epsilon")) == pytest.approx(1e-6)
    ids = [int(_gguf_field(path, f"tokenizer.ggml.{k}_token_id")) for k in ("bos", "eos", "padding", "eot")]
    assert ids == [0, 2, 0, 2]  # <|endoftext|>, <|im_end|> (the config's), <|endoftext|>, <|im_end|> (ends a turn)
    # the folder keeps the files loaders read beside the GGUF: transformers 5 keeps the chat template in its own file
    assert (tmp_path / "q4" / "chat_template.jinja").read_text() == (folder / "chat_template.jinja").read_text()


def test_the_context_is_the_sliding_window_only_when_a_layer_slides():
    # Qwen2/2.5 configs name a window that no layer uses (use_sliding_window false, or every layer typed full)
    full = {"max_position_embeddings": 128, "sliding_window": 32}
    assert gguf_arch.context_length({**full, "layer_types": ["full_attention"] * 2}) == 128
    assert gguf_arch.context_length({**full, "layer_types": ["full_attention", "sliding_attention"]}) == 32
    assert gguf_arch.context_length({**full, "use_sliding_window": False}) == 128  # a config.json from before layer_types
    assert gguf_arch.context_length(full) == 32  # Mistral's: every layer slides
