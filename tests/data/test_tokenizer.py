"""Tokenizers: char and byte-level BPE training, the fast encoder's exact agreement with the tokenizer,
and files that transformers.AutoTokenizer loads (with a chat template that renders)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from llmkit.data.encoder import FastEncoder
from llmkit.data.tokenizer import (
    CHAT_TOKENS,
    EOT,
    PAD,
    build_tokenizer,
    check_spec,
    load_tokenizer,
)
from llmkit.errors import UserError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def english() -> list[str]:
    text = (SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    return [text[i:i + 2000] for i in range(0, 200_000, 2000)]


@pytest.fixture(scope="module")
def mixed() -> list[str]:
    """Chinese verse, SMS text full of numbers and symbols, and random Unicode."""
    poems = json.loads((SHARED / "chinese_poetry" / "tangshi300.json").read_text(encoding="utf-8"))
    sms = (SHARED / "smsspam" / "SMSSpamCollection.tsv").read_text(encoding="utf-8").splitlines()
    rng = random.Random(0)
    alphabet = [chr(c) for c in [*range(32, 127), 0x85, 0xA0, 0xE9, 0x301, 0x660, 0x2028, 0x3000, 0x4E00, 0xFF10, 0x1F600]]
    noise = ["".join(rng.choice(alphabet + [" "] * 8) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    return ["\n".join(p["paragraphs"]) for p in poems[:150]] + [line.split("\t", 1)[1] for line in sms[:300]] + noise


@pytest.fixture(scope="module")
def bpe(english, mixed):
    return build_tokenizer("bpe:400", english + mixed)


def reference(backend: Tokenizer, texts: list[str], sep: int) -> list[int]:
    """What the tokenizer itself produces, special-token strings read as text, a separator first."""
    tok = Tokenizer.from_str(backend.to_str())
    tok.encode_special_tokens = True
    return [i for enc in tok.encode_batch(texts, add_special_tokens=False) for i in [sep, *enc.ids]]


def test_bpe_has_the_requested_vocabulary_and_special_tokens(bpe):
    assert len(bpe) == 400
    assert bpe.kind == "bpe"
    assert bpe.eos_token_id == bpe.backend.token_to_id(EOT)
    assert bpe.pad_token_id == bpe.backend.token_to_id(PAD)
    assert all(bpe.backend.token_to_id(t) is not None for t in CHAT_TOKENS)


def test_char_vocabulary_is_the_characters_seen_plus_special_tokens():
    tok = build_tokenizer("char", ["abc", "cab", "床前"])
    assert len(tok) == 7 + 5
    ids = tok.backend.encode("ab床").ids
    assert tok.backend.decode(ids) == "ab床"


def test_fast_encoder_gives_exactly_the_tokenizers_ids(bpe, english, mixed):
    sep = bpe.eos_token_id
    for texts in (english, mixed):
        encoder = FastEncoder(bpe.backend, sep)
        assert encoder.mode == "bpe"
        got = np.concatenate([encoder.encode(texts[i:i + 37]) for i in range(0, len(texts), 37)])
        assert got.tolist() == reference(bpe.backend, texts, sep)
        assert encoder.mode == "bpe"  # its own spot check never had to fall back


def _random_ascii(rng: random.Random, n: int) -> list[str]:
    """ASCII texts dense in what the pre-token rules turn on: contractions, space and whitespace runs,
    digits, punctuation runs, control characters and pre-tokens longer than the encoder's 15-byte keys."""
    atoms = [*"stmdrevlxST09.,-!'\"", "'s", "'re", "'ve", "'ll", "'d", " ", "  ", "\n", "\n\n", "\t", " \n", "\r",
             "\x0b", "\x0c", "\x00", "\x1c", "\x7f", "'", "''", " '", "a" * 20, " " * 18, "-" * 17, "7" * 16, "the", " king"]
    return ["".join(rng.choice(atoms) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def test_ascii_pre_tokens_follow_the_gpt2_pattern():
    from llmkit.data.encoder import GPT2_ASCII, _ascii_pretokens

    rng = random.Random(1)
    for _ in range(400):
        texts = _random_ascii(rng, rng.randint(1, 6))
        starts, ends, first, _, data = _ascii_pretokens(texts)
        got = [data[a:b].decode() for a, b in zip(starts, ends, strict=True)]
        bounds = [*first.tolist(), len(got)]
        assert [got[bounds[i]:bounds[i + 1]] for i in range(len(texts))] == [GPT2_ASCII.findall(t) for t in texts]


def test_fast_encoder_agrees_on_random_ascii_and_across_cache_resets(bpe, mixed):
    rng = random.Random(2)
    texts = _random_ascii(rng, 600) + mixed[:40] + _random_ascii(rng, 100)  # ASCII and non-ASCII runs in one call
    sep = bpe.eos_token_id
    for max_cache in (FastEncoder.MAX_CACHE, 60):
        encoder = FastEncoder(bpe.backend, sep)
        encoder.MAX_CACHE = max_cache
        got = np.concatenate([encoder.encode(texts[i:i + 50]) for i in range(0, len(texts), 50)])
        assert got.tolist() == reference(bpe.backend, texts, sep)
        assert encoder.mode == "bpe"


def test_fast_char_encoding_maps_unseen_characters_to_unk(english):
    tok = build_tokenizer("char", english)
    encoder = FastEncoder(tok.backend, tok.eos_token_id)
    texts = [*english[:5], "unseen: 床 \U0001f600 ~"]
    assert encoder.mode == "char"
    assert encoder.encode(texts).tolist() == reference(tok.backend, texts, tok.eos_token_id)


def test_document_text_never_turns_into_a_control_token(bpe):
    sep = bpe.eos_token_id
    ids = FastEncoder(bpe.backend, sep).encode(["a literal <|endoftext|> and <|user|> inside"]).tolist()
    assert ids.count(sep) == 1 and ids[0] == sep
    assert bpe.backend.token_to_id("<|user|>") not in ids


def test_unknown_tokenizers_take_the_library_path_and_agree(english):
    wordpiece = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1, "king": 2, EOT: 3}, unk_token="[UNK]"))
    wordpiece.pre_tokenizer = pre_tokenizers.Whitespace()
    encoder = FastEncoder(wordpiece, 3)
    assert encoder.mode is None
    assert encoder.encode(["the king", "the queen"]).tolist() == [3, 1, 2, 3, 1, 0]


def test_saved_files_load_in_transformers_with_a_working_chat_template(bpe, tmp_path):
    from transformers import AutoTokenizer

    bpe.save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert (hf.eos_token, hf.bos_token, hf.pad_token) == (EOT, EOT, PAD)
    assert hf.eos_token_id == bpe.eos_token_id and len(hf) == len(bpe)
    text = "To be, or not to be: 生存還是毀滅"
    assert hf(text, add_special_tokens=False)["input_ids"] == bpe.backend.encode(text, add_special_tokens=False).ids
    assert hf.decode(hf(text)["input_ids"]) == text
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    rendered = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|user|>\nHi<|end|>\n<|assistant|>\nHello.<|end|>\n<|assistant|>\n"
    ids = hf.apply_chat_template(chat, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert bpe.backend.token_to_id("<|user|>") in ids  # the markers are single special tokens


def test_a_tokenizer_json_is_reused_and_gains_the_special_tokens_it_lacks(tmp_path):
    plain = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    plain.save(str(tmp_path / "tok.json"))
    tok = load_tokenizer(tmp_path / "tok.json")
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert len(tok) == 2 + 7


@pytest.mark.parametrize("spec", ["bpe", "bpe:abc", "bpe:100", "wordpiece", "./missing-folder", "a/b/c"])
def test_bad_tokenizer_options_are_refused_before_any_work(spec):
    with pytest.raises(UserError, match=r"data\.tokenizer = "):
        check_spec(spec)


def test_prepare_from_python_answers_a_hub_tokenizer_it_cannot_reach_at_once(tmp_path, monkeypatch):
    """The Python API, like the CLI: one UserError before any work, not transformers' retries (~50 s offline)."""
    import time

    from huggingface_hub import constants

    from llmkit.config import DataConfig
    from llmkit.data import prepare
    from llmkit.errors import UserError
    from llmkit.workspace import Workspace

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets when the library loads
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    text = tmp_path / "t.txt"
    text.write_text("some text to prepare\n\nand more of it\n")
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"data.tokenizer = 'nosuch/path'.*bpe:VOCAB"):
        prepare(DataConfig(inputs=[str(text)], task="lm", tokenizer="nosuch/path"), Workspace.open(tmp_path / "ws"))
    assert time.perf_counter() - start < 20
    assert not list((tmp_path / "ws").glob("datasets/*"))
