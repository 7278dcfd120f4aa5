"""llmkit.runtime.detokenize: incremental text equals decoding everything; partial characters and stop prefixes held back."""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
)

from llmkit.runtime.detokenize import TextStream


def _byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte: every multi-byte character arrives in pieces."""
    byte_vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk)


def test_stream_holds_back_partial_characters_and_stop_prefixes():
    tok = _byte_tokenizer()
    ids = tok("héllo wörld ✓ end", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok, stop=["d ✓"])
    pieces = [stream.push(ids[:i]) for i in range(1, len(ids) + 1)]
    pieces.append(stream.finish())
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == stream.text == "héllo wörl" and stream.stopped


def test_incremental_stream_equals_decoding_everything():
    # A byte-level BPE whose merges make multi-byte and space-led pieces: what streams out, piece by
    # piece, is exactly the decode of the whole sequence.
    from tokenizers import trainers

    text = "héllo wörld, the ✓ mark — naïve café 東京 " * 20
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for order in (ids, list(reversed(ids))):  # reversed: byte pieces arrive in odd orders too
        stream = TextStream(tok)
        pieces = [stream.push(order[:i]) for i in range(1, len(order) + 1)] + [stream.finish()]
        assert "".join(pieces) == tok.decode(order, clean_up_tokenization_spaces=False)


def test_a_character_cut_by_the_end_is_left_out_and_earlier_invalid_bytes_stay():
    """max_tokens reached after the first byte of a character: the answer ended in '�'."""
    tok = _byte_tokenizer()
    ids = tok("明月", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok)
    cut = ids[:4]  # 明 and the first byte of 月
    pieces = [stream.push(cut[:i]) for i in range(1, len(cut) + 1)] + [stream.finish()]
    assert "".join(pieces) == stream.text == "明"
    # a stray continuation byte the model made earlier is part of its answer: kept
    stray = ids[4:5] + tok("ok", add_special_tokens=False)["input_ids"]
    stream = TextStream(tok)
    pieces = [stream.push(stray[:i]) for i in range(1, len(stray) + 1)] + [stream.finish()]
    assert "".join(pieces) == stream.text == "\ufffdok"
