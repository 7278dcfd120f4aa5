"""Tokenizers: train a character-level or byte-level BPE one, or reuse a model's.

Everything is a Hugging Face `tokenizers` tokenizer wrapped as `PreTrainedTokenizerFast` and saved
with `save_pretrained`, so `transformers.AutoTokenizer` loads it without llmkit.
`<|endoftext|>` separates documents in token shards and doubles as bos: a document in training
always follows one, so generation starts from the same state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llmkit.errors import UserError

EOT = "<|endoftext|>"
PAD = "<|pad|>"
UNK = "<|unk|>"
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
SPECIAL_TOKENS = [EOT, PAD, UNK, *CHAT_TOKENS]

# The default chat template of models llmkit trains: each turn is <|role|>\n...<|end|>\n.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def build_tokenizer(spec: str, texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """`char`, `bpe:VOCAB`, or a path/model id whose tokenizer is reused (texts unused then)."""
    if spec == "char":
        return _wrap(_train_char(texts))
    if spec.startswith("bpe"):
        _, _, size = spec.partition(":")
        if not size.isdigit() or not 256 + len(SPECIAL_TOKENS) <= int(size) <= 1_000_000:
            raise UserError(f"data.tokenizer = '{spec}': use bpe:VOCAB with VOCAB between {256 + len(SPECIAL_TOKENS)} and 1000000, e.g. bpe:4096")
        return _wrap(_train_bpe(texts, int(size)))
    return load_tokenizer(spec)


def load_tokenizer(spec: str | Path) -> PreTrainedTokenizerFast:
    path = Path(spec)
    try:
        if path.is_file() and path.name.endswith(".json"):
            return _wrap(Tokenizer.from_file(str(path)))
        if path.is_dir() or "/" in str(spec):
            tok = AutoTokenizer.from_pretrained(str(spec), trust_remote_code=False)
            if not isinstance(tok, PreTrainedTokenizerFast):
                raise UserError(f"tokenizer at {spec} is not a fast (tokenizers) tokenizer")
            return tok
    except (OSError, ValueError) as err:
        raise UserError(f"data.tokenizer = '{spec}': cannot load a tokenizer there ({str(err).splitlines()[0]})") from None
    raise UserError(f"data.tokenizer = '{spec}': use char, bpe:VOCAB, a tokenizer.json, or a model folder")


def _train_char(texts: Iterable[str]) -> Tokenizer:
    chars: set[str] = set()
    for text in texts:
        chars.update(text)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(chars):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def _train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_batched(texts), trainer=trainer)
    return tok


def _batched(texts: Iterable[str], size: int = 256) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    if tok.token_to_id(EOT) is None:
        tok.add_special_tokens([EOT, PAD])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=PAD,
        unk_token=UNK if tok.token_to_id(UNK) is not None else None,
        additional_special_tokens=[t for t in CHAT_TOKENS if tok.token_to_id(t) is not None],
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tokenizer_kind(tok: PreTrainedTokenizerFast) -> str:
    model = tok.backend_tokenizer.model
    return type(model).__name__.lower()  # bpe | wordlevel | unigram | wordpiece
