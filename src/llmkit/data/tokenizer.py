"""Tokenizers: train a character-level or byte-level BPE one, or reuse a model's.

Everything is a Hugging Face `tokenizers` tokenizer saved with a `tokenizer_config.json` beside it,
so `transformers.AutoTokenizer` loads it without llmkit. The config is written here rather than by
transformers' `save_pretrained` because importing transformers (and with it torch) costs seconds on
every `llmkit data prepare`; only reusing a model's tokenizer imports it.
`<|endoftext|>` separates documents in token shards and doubles as bos: a document in training
always follows one, so generation starts from the same state.

`FastEncoder` (in `encoder.py`) gives the ids `Tokenizer.encode` would give
for the tokenizers trained here, several times faster.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

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



class LlmkitTokenizer:
    """A `tokenizers.Tokenizer` plus the special tokens and chat template that make it a HF tokenizer."""

    def __init__(self, backend: Tokenizer, hf=None):
        self.backend = backend
        self.hf = hf  # the transformers tokenizer when a model's was reused
        if hf is None:
            self.eos_token, self.bos_token, self.pad_token = EOT, EOT, PAD
            self.unk_token = UNK if backend.token_to_id(UNK) is not None else None
        else:
            self.eos_token, self.bos_token, self.pad_token, self.unk_token = (
                hf.eos_token, hf.bos_token or hf.eos_token, hf.pad_token, hf.unk_token)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int:
        return self.backend.token_to_id(self.eos_token)

    @property
    def bos_token_id(self) -> int | None:
        return self.backend.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def pad_token_id(self) -> int | None:
        return self.backend.token_to_id(self.pad_token) if self.pad_token else None

    @property
    def kind(self) -> str:
        return type(self.backend.model).__name__.lower()  # bpe | wordlevel | unigram | wordpiece

    def token_text(self, token_id: int) -> str:
        """What a token stands for, readable (byte-level BPE stores ' the' as 'Ġthe'). A byte-level piece holding only
        some of a character's bytes (the first two of 好) shows them as <0xE5><0xA5>, as explain does: decoded, every
        such piece was the same '�', and a Chinese dataset's top tokens read '�':41 '�':33 '�':23."""
        text = self.backend.decode([token_id], skip_special_tokens=False)
        if not text:
            return self.backend.id_to_token(token_id) or ""
        if "\ufffd" not in text:
            return text
        piece = self.backend.id_to_token(token_id) or ""
        table = _byte_of_char()
        if not piece or not all(c in table for c in piece):
            return text  # not a byte-level piece: the tokenizer's own text
        raw = bytes(table[c] for c in piece)
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            whole = decoder.decode(raw)  # whole characters; a character's first bytes wait in the decoder
        except UnicodeDecodeError:  # the piece starts inside a character
            return "".join(f"<0x{b:02X}>" for b in raw)
        return whole + "".join(f"<0x{b:02X}>" for b in decoder.getstate()[0])

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        if self.hf is not None:
            self.hf.save_pretrained(folder)
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
            "unk_token": self.unk_token,
            "additional_special_tokens": [t for t in CHAT_TOKENS if self.backend.token_to_id(t) is not None],
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def check_spec(spec: str) -> None:
    """Fail before any work when the tokenizer option cannot be right."""
    if spec == "char":
        return
    if spec.startswith("bpe"):
        _bpe_size(spec)
        return
    path = Path(spec).expanduser()
    if (path.is_file() and path.name.endswith(".json")) or path.is_dir():
        return
    from llmkit.models.hub import hub_folder, is_hub_id

    if is_hub_id(spec):  # one quick answer, not transformers' five retries of each file (~50 s offline)
        hub_folder(spec, weights=False, where=f"data.tokenizer = '{spec}': not a tokenizer.json or a folder here",
                   fix="use char, bpe:VOCAB, a tokenizer.json or a model folder")
        return
    # Anything but a Hub id ("org/model") must be a local path, and that one does not exist.
    raise UserError(f"data.tokenizer = '{spec}': no tokenizer.json or model folder there; "
                    "use char, bpe:VOCAB, a tokenizer.json, or a model folder")


def _bpe_size(spec: str) -> int:
    _, _, size = spec.partition(":")
    low = 256 + len(SPECIAL_TOKENS)
    if not size.isdigit() or not low <= int(size) <= 1_000_000:
        raise UserError(f"data.tokenizer = '{spec}': use bpe:VOCAB with VOCAB between {low} and 1000000, e.g. bpe:4096")
    return int(size)


def build_tokenizer(spec: str, texts: Iterable[str]) -> LlmkitTokenizer:
    """`char`, `bpe:VOCAB`, or a path/model id whose tokenizer is reused (texts unused then)."""
    check_spec(spec)
    if spec == "char":
        return LlmkitTokenizer(_train_char(texts))
    if spec.startswith("bpe"):
        return LlmkitTokenizer(_train_bpe(texts, _bpe_size(spec)))
    return load_tokenizer(spec)


def load_tokenizer(spec: str | Path) -> LlmkitTokenizer:
    path = Path(spec)
    if path.is_file() and path.name.endswith(".json"):
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises plain Exception on a malformed file
            raise UserError(f"data.tokenizer = '{spec}': not a tokenizers tokenizer.json ({str(err).splitlines()[0]})") from None
        backend.add_special_tokens([t for t in SPECIAL_TOKENS if backend.token_to_id(t) is None])
        return LlmkitTokenizer(backend)
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tok = AutoTokenizer.from_pretrained(str(spec), trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"data.tokenizer = '{spec}': cannot load a tokenizer there ({str(err).splitlines()[0]})") from None
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise UserError(f"tokenizer at {spec} is not a fast (tokenizers) tokenizer")
    if tok.eos_token is None:  # BERT-style tokenizers: shards need a document separator
        tok.add_special_tokens({"eos_token": EOT})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": PAD})
    if tok.chat_template is None:  # the turn markers are then plain text to this tokenizer, which still works
        tok.chat_template = CHAT_TEMPLATE
    return LlmkitTokenizer(tok.backend_tokenizer, hf=tok)


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


# Pre-tokens for text with Chinese or Japanese: GPT-2's pattern, except that a run of CJK characters is a
# pre-token of its own (never glued to Latin letters), so BPE can merge the common two- and three-character
# words inside it, and a run of CJK punctuation takes the line break after it: a poem spends one token
# on "。\n" instead of two. Punctuation never merges with characters. On text without CJK characters and
# without the punctuation in _CJK_PUNCT the pre-tokens are GPT-2's.
_CJK_CHARS = r"\p{Han}\p{Hiragana}\p{Katakana}々〆ー"  # (々〆ー are script Common, but part of words)
_CJK_PUNCT = "、-〄〈-〠〰〽！-／：-＠［-｀｛-･“”‘’…—·"  # CJK and full-width punctuation, quotes, ellipsis, dash
CJK_PATTERN = (rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{_CJK_CHARS}]+| ?[^\P{{L}}{_CJK_CHARS}]+| ?\p{{N}}+"
               rf"|[{_CJK_PUNCT}]+\n*| ?[^\s\p{{L}}\p{{N}}]+|\s+(?!\S)|\s+")
CJK_SHARE = 0.1  # share of CJK characters in the training sample above which the CJK pattern is used
_CJK_SAMPLE = 1_000_000  # characters of the training sample looked at to decide
_CJK_RUN = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def cjk_share(texts: list[str]) -> float:
    """Share of CJK characters (kana and ideographs) in the first ~million characters of `texts`."""
    head, size = [], 0
    for text in texts:
        head.append(text[:_CJK_SAMPLE - size])
        size += len(head[-1])
        if size >= _CJK_SAMPLE:
            break
    joined = "".join(head)
    return len(_CJK_RUN.findall(joined)) / max(1, len(joined) - joined.count(" ") - joined.count("\n"))


def bpe_pre_tokenizer(cjk: bool):
    """GPT-2's byte-level pre-tokenizer, or for mostly-CJK text the same bytes cut by CJK_PATTERN.

    Only the CJK-heavy case uses the Split: `FastEncoder` knows GPT-2's pattern, so English and code keep
    its fast path and exactly the tokenization they had.
    """
    if not cjk:
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(CJK_PATTERN), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    texts = texts if isinstance(texts, list) else list(texts)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = bpe_pre_tokenizer(cjk_share(texts) >= CJK_SHARE)
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


@functools.cache
def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, the alphabet byte-level BPE vocabularies are written in:
    printable bytes stand for themselves, the others for chr(256 + n) in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), ord("\xff") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """byte_alphabet backwards: the byte each character of a byte-level piece stands for."""
    return {char: b for b, char in byte_alphabet().items()}
