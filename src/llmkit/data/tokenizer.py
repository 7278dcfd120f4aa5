"""Tokenizers: train a character-level or byte-level BPE one, or reuse a model's.

Everything is a Hugging Face `tokenizers` tokenizer saved with a `tokenizer_config.json` beside it,
so `transformers.AutoTokenizer` loads it without llmkit. The config is written here rather than by
transformers' `save_pretrained` because importing transformers (and with it torch) costs seconds on
every `llmkit data prepare`; only reusing a model's tokenizer imports it.
`<|endoftext|>` separates documents in token shards and doubles as bos: a document in training
always follows one, so generation starts from the same state.

`FastEncoder` gives the ids `Tokenizer.encode` would give for the tokenizers trained here, several
times faster: it splits text into pre-tokens with Python's regex engines (the same pattern as the
ByteLevel pre-tokenizer) and encodes each distinct pre-token once. Text is always treated as text:
a literal "<|endoftext|>" inside a document is not turned into the separator token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

import numpy as np
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

# GPT-2's pre-tokenizer pattern, as the ByteLevel pre-tokenizer uses it; the ASCII twin is for `re`,
# which is about twice as fast as `regex` and agrees with it on ASCII text.
_GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_GPT2_ASCII = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""", re.ASCII)


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
        """What a token stands for, readable (byte-level BPE stores ' the' as 'Ġthe')."""
        text = self.backend.decode([token_id], skip_special_tokens=False)
        return text if text else (self.backend.id_to_token(token_id) or "")

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
    # Anything but a Hub id ("org/model") must be a local path, and that one does not exist.
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1 or path.exists():
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


# -- fast encoding ---------------------------------------------------------------------------------


class FastEncoder:
    """Encodes documents to one flat id array, each document preceded by the separator id."""

    MAX_CACHE = 500_000  # distinct pre-tokens remembered; the cache starts over beyond it

    def __init__(self, backend: Tokenizer, sep_id: int):
        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.encode_special_tokens = True  # data text never becomes a control token
        self.sep_id = sep_id
        self.mode = _fast_mode(self.backend)
        self._unicode = None
        if self.mode == "bpe":
            try:
                import regex  # installed with transformers; without it non-ASCII text takes the slow path

                self._unicode = regex.compile(_GPT2)
            except ImportError:
                pass
        if self.mode == "char":
            vocab = self.backend.get_vocab()
            singles = {ord(t): i for t, i in vocab.items() if len(t) == 1}
            self._table = np.full(max(singles, default=0) + 1, self.backend.token_to_id(UNK), dtype=np.int64)
            self._table[list(singles)] = list(singles.values())
            self._unk = self.backend.token_to_id(UNK)
        self._reset()
        self.verified = False

    def _reset(self) -> None:
        self._index: dict[str | None, int] = {None: 0}  # None stands for the document separator
        self._flat: list[int] = [self.sep_id]
        self._starts: list[int] = [0]
        self._lens: list[int] = [1]
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def encode(self, texts: list[str]) -> np.ndarray:
        if not self.verified and texts:
            self._verify(texts[:16])
        if self.mode == "char":
            return self._encode_chars(texts)
        if self.mode is None:
            return self._slow(texts)
        return self._encode_pieces(texts)

    def _slow(self, texts: list[str]) -> np.ndarray:
        parts = []
        for enc in self.backend.encode_batch(texts, add_special_tokens=False):
            parts.append([self.sep_id])
            parts.append(enc.ids)
        return np.fromiter(chain.from_iterable(parts), dtype=np.int64)

    def _verify(self, texts: list[str]) -> None:
        # The fast path must agree with the tokenizer itself; if it ever does not, it is not used.
        self.verified = True
        if self.mode is not None and not np.array_equal(self.encode(texts), self._slow(texts)):
            self.mode = None

    def _encode_chars(self, texts: list[str]) -> np.ndarray:
        parts = []
        for text in texts:
            cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
            ids = np.full(len(cps) + 1, self._unk, dtype=np.int64)
            known = cps < len(self._table)
            ids[1:][known] = self._table[cps[known]]
            ids[0] = self.sep_id
            parts.append(ids)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _split(self, text: str) -> list[str] | None:
        if text.isascii():
            return _GPT2_ASCII.findall(text)
        return self._unicode.findall(text) if self._unicode is not None else None

    def _encode_pieces(self, texts: list[str]) -> np.ndarray:
        pieces = [self._split(t) for t in texts]
        if any(p is None for p in pieces):
            return self._slow(texts)
        missing = set().union(*pieces).difference(self._index)
        if len(self._index) + len(missing) > self.MAX_CACHE:
            self._reset()
            missing = set().union(*pieces)
        if missing or self._arrays is None:
            self._learn(list(missing))
        flat, starts, lens = self._arrays
        keys = chain.from_iterable(chain((None,), p) for p in pieces)
        idx = np.fromiter(map(self._index.__getitem__, keys), dtype=np.int64)
        n = lens[idx]
        ends = np.cumsum(n)
        return flat[np.repeat(starts[idx] - (ends - n), n) + np.arange(ends[-1] if len(ends) else 0)]

    def _learn(self, pieces: list[str]) -> None:
        for piece, enc in zip(pieces, self.backend.encode_batch(pieces, add_special_tokens=False), strict=True):
            self._index[piece] = len(self._starts)
            self._starts.append(len(self._flat))
            self._lens.append(len(enc.ids))
            self._flat.extend(enc.ids)
        self._arrays = (np.asarray(self._flat, dtype=np.int64), np.asarray(self._starts, dtype=np.int64),
                        np.asarray(self._lens, dtype=np.int64))


def _fast_mode(backend: Tokenizer) -> str | None:
    """'bpe' or 'char' when the tokenizer is one this module trains (so FastEncoder knows its rules)."""
    spec = json.loads(backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if spec.get("normalizer") is not None:
        return None
    if (model.get("type") == "BPE" and not model.get("dropout") and not model.get("continuing_subword_prefix")
            and not model.get("end_of_word_suffix") and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True) and not pre.get("add_prefix_space")):
        return "bpe"
    if (model.get("type") == "WordLevel" and pre.get("type") == "Split"
            and pre.get("pattern") == {"Regex": r"[\s\S]"} and pre.get("behavior") == "Isolated"):
        return "char"
    return None
