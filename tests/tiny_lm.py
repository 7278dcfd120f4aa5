"""Tiny real Llama models and a character tokenizer for the decoder and generation tests. Each test module
makes its fixtures from these: `tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)`."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from llmkit.models.presets import llama_config

TEXT = "the cat sat on the mat. the dog sat on the log. "


CONTEXT = 64


def single_thread():
    # Models this small only pay OpenMP's sync cost for a second thread; restored for other modules.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def char_tokenizer():
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for ch in sorted(set(TEXT + "abcdefghijklmnopqrstuvwxyz\n")):
        vocab.setdefault(ch, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def make_model(tokenizer, seed=0, **overrides):
    # Smaller than nano: the tests are about exactness, and HF's generate() sets the pace.
    torch.manual_seed(seed)
    cfg = llama_config("nano", len(tokenizer), CONTEXT, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       overrides=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                      **overrides))
    return LlamaForCausalLM(cfg).eval()


def train_tiny(tokenizer):
    # A few steps on repetitive text, so greedy output is text-like rather than noise.
    model = make_model(tokenizer)
    ids = torch.tensor(tokenizer(TEXT * 4)["input_ids"])
    batch = torch.stack([ids[i:i + 48] for i in range(0, 4 * 12, 12)])  # (4, 48)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(30):
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


VARIANTS = {
    "tied": {},
    "gqa": {"num_key_value_heads": 2},
    "untied": {"tie_word_embeddings": False},
    "gqa-untied-theta": {"num_key_value_heads": 1, "tie_word_embeddings": False, "rope_theta": 500.0},
}


def hf_greedy(model, ids, n):
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def prompts(tokenizer):
    texts = ("the cat", "a", "dog sat on the log")
    return [[1] + tokenizer(p, add_special_tokens=False)["input_ids"] for p in texts]


N_NEW = 16
