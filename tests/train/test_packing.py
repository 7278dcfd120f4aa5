"""Packed SFT rows: several conversations in one row, each attending only to itself, on both training paths."""

from __future__ import annotations

import pytest
import torch

from llmkit.config import LoraConfig, SftConfig
from llmkit.models.io import Model
from llmkit.train import fast_lora
from llmkit.train.supervised import IGNORE, ChatExample, collate, pack, token_loss_sum
from tests import tiny_lm

tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)


@pytest.fixture(scope="module")
def llama_folder(tokenizer, tmp_path_factory):
    model = tiny_lm.make_model(tokenizer, seed=3, num_key_value_heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # far from the init, so attention across documents would show
    folder = tmp_path_factory.mktemp("llama")
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _conversations(vocab: int) -> list[ChatExample]:
    g = torch.Generator().manual_seed(1)
    out = []
    for n in (9, 14, 7, 12):
        ids = torch.randint(4, vocab, (n,), generator=g).tolist()
        out.append(ChatExample(ids, [IGNORE] * 3 + ids[3:]))  # a 3-token prompt, then the reply is learned
    return out


def test_pack_restarts_positions_at_every_conversation_and_carries_a_cut_one_on():
    convs = [ChatExample([5] * n, [IGNORE] + [5] * (n - 1)) for n in (4, 6, 3)]
    rows = pack(convs, 8)
    assert [r.positions for r in rows] == [[0, 1, 2, 3, 0, 1, 2, 3], [4, 5, 0, 1, 2]]
    batch = collate(rows, pad_id=0)
    assert "attention_mask" not in batch  # transformers would ignore the documents given a mask
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3], [4, 5, 0, 1, 2, 3, 4, 5]]
    assert batch["labels"][1, 5:].tolist() == [IGNORE] * 3  # padding is never learned


def _separate_loss(loss_sum, model, convs, pad_id) -> tuple[float, int]:
    total, count = 0.0, 0
    for c in convs:
        loss, n = loss_sum(model, collate([c], pad_id))
        total, count = total + float(loss), count + n
    return total, count


@pytest.mark.parametrize("path", ["fast", "peft"])
def test_a_packed_row_scores_each_conversation_as_if_alone(path, llama_folder, tokenizer):
    convs = _conversations(len(tokenizer))
    packed = pack(convs, 1000)
    assert len(packed) == 1
    if path == "fast":
        cfg = SftConfig(base="x", method="lora", lora=LoraConfig(r=4, alpha=8, dropout=0.0))
        model, loss_sum = fast_lora.load_fast(Model(llama_folder, "tiny"), cfg, "fp32", "cpu"), fast_lora.token_loss_sum
    else:
        from transformers import AutoModelForCausalLM

        model, loss_sum = AutoModelForCausalLM.from_pretrained(str(llama_folder), use_safetensors=True), token_loss_sum
    model.eval()
    with torch.no_grad():
        alone, n_alone = _separate_loss(loss_sum, model, convs, 0)
        together, n_together = loss_sum(model, collate(packed, 0))
        across, _ = loss_sum(model, {k: v for k, v in collate(packed, 0).items() if k != "position_ids"}
                             | {"attention_mask": torch.ones(1, len(packed[0].ids), dtype=torch.long)})
    # Every conversation opens with an unlabelled prompt, so the row scores exactly the positions they score alone.
    assert n_together == n_alone
    assert float(together) == pytest.approx(alone, rel=1e-5)
    assert abs(float(across) - alone) > 1e-3 * alone  # without the positions, attention crosses conversations


def test_compiled_blocks_give_the_same_loss_and_adapter_gradients(llama_folder, tokenizer):
    """`train sft --compile` on the fast path: every block compiled in place, the same numbers (and names)."""
    convs = _conversations(len(tokenizer))
    batch = collate(pack(convs, 1000), 0)
    results = []
    for compile_blocks in (False, True):
        cfg = SftConfig(base="x", method="lora", lora=LoraConfig(r=4, alpha=8, dropout=0.0), compile=compile_blocks)
        model = fast_lora.load_fast(Model(llama_folder, "tiny"), cfg, "fp32", "cpu")
        with torch.no_grad():  # B non-zero, so the adapters' path carries gradient to A too
            for _, _, name, module in model.adapters():
                module.lora_B[name].normal_(0, 0.1, generator=torch.Generator().manual_seed(7))
        loss, n = fast_lora.token_loss_sum(model, batch)
        (loss / n).backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
        results.append((float(loss), grads, sorted(model.adapter_state())))
    (plain_loss, plain_grads, plain_names), (compiled_loss, compiled_grads, compiled_names) = results
    assert compiled_names == plain_names
    assert compiled_loss == pytest.approx(plain_loss, rel=1e-5)
    for key, grad in plain_grads.items():
        torch.testing.assert_close(compiled_grads[key], grad, rtol=1e-4, atol=1e-6)
