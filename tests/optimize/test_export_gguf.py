"""GGUF export of an architecture the writer does not know (issue 18 item 3): a real, tiny GPT-2 that
transformers loads is refused by `llmkit export` with one line naming the architectures the writer does know,
exit 2, and nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests import tiny_lm

    folder = tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"
    tokenizer = tiny_lm.char_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2, bos_token_id=1,
                        eos_token_id=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_unknown_architecture_is_one_line_naming_the_known_ones(gpt2_folder: Path, tmp_path: Path):
    workspace = tmp_path / "ws"
    out = run_cli("export", str(gpt2_folder), "--format", "gguf", "--quant", "f16", workspace=workspace)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("error: GGUF export supports LlamaForCausalLM")
    assert "GPT2LMHeadModel" in lines[0] and "--format onnx" in lines[0]
    models = workspace / "models"
    assert not models.exists() or not any(models.iterdir())


def test_sentencepiece_style_tokenizer_is_refused_before_anything_is_written(tmp_path: Path):
    """A Llama whose tokenizer is SentencePiece-style BPE (Llama 2, Mistral: `▁` for spaces, byte fallback): written as
    llama.cpp's gpt2 tokenizer, it would load and mis-tokenize every prompt, so the export says so instead."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests import tiny_lm

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}, "▁": 259, "▁a": 260, "a": 261}
    spm = Tokenizer(models.BPE(vocab, [("▁", "a")], unk_token="<unk>", byte_fallback=True))
    spm.pre_tokenizer = pre_tokenizers.Metaspace()
    spm.decoder = decoders.Metaspace()
    tok = PreTrainedTokenizerFast(tokenizer_object=spm, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    folder = tmp_path / "spm-llama"
    tiny_lm.make_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    workspace = tmp_path / "ws"
    out = run_cli("export", str(folder), "--format", "gguf", "--quant", "f16", workspace=workspace)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: GGUF export writes byte-level BPE"), out.stderr
    assert "SentencePiece-style" in lines[0] and "convert_hf_to_gguf.py" in lines[0]
    models_dir = workspace / "models"
    assert not models_dir.exists() or not any(models_dir.iterdir())
