"""SFT: the assistant-only loss mask token by token, packing, LoRA runs, merge equality, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmkit.config import LoraConfig, SftConfig
from llmkit.errors import UserError
from llmkit.models.io import load_causal_lm, load_tokenizer_for, resolve_model
from llmkit.registry import Registry
from llmkit.train.checkpoint import TrainingInterrupted
from llmkit.train.lora import merge
from llmkit.train.supervised import IGNORE, ChatExample, encode_chat, encode_split, pack, sft
from llmkit.workspace import Workspace

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "A fool."},
    {"role": "user", "content": "Why?"},
    {"role": "assistant", "content": "Tis so."},
]


def _cfg(**overrides) -> SftConfig:
    base = dict(base="tiny-lm", data="chats", max_steps=12, batch_size=4, max_length=160, lr=5e-3, checkpoint_every=4,
                eval_every=6, eval_max_examples=8, seed=3, skip_bad=True, lora=LoraConfig(r=4, alpha=8, dropout=0.1))
    base.update(overrides)
    return SftConfig(**base)


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model, chat_data):
    return Workspace.open(lm_workspace)


@pytest.fixture(scope="module")
def lora_model(ws):
    return sft(_cfg(name="sft-lora"), ws, Registry.for_workspace(ws.root))


def test_loss_mask_covers_assistant_tokens_only_token_by_token(ws, tiny_model):
    tok = load_tokenizer_for(tiny_model)
    example, truncated = encode_chat(tok, CONVERSATION, 1000)
    assert not truncated and len(example.ids) == len(example.labels)
    # Which characters of the rendered conversation belong to assistant replies (their <|end|> included).
    text = tok.apply_chat_template(CONVERSATION, tokenize=False)
    learn = [False] * len(text)
    for reply in ("A fool.<|end|>\n", "Tis so.<|end|>\n"):
        start = text.index("<|assistant|>\n" + reply) + len("<|assistant|>\n")
        learn[start: start + len(reply)] = [True] * len(reply)
    position = 0
    assert example.ids[0] == tok.bos_token_id and example.labels[0] == IGNORE
    for token, label in zip(example.ids[1:], example.labels[1:], strict=True):
        piece = tok.decode([token])
        assert text[position: position + len(piece)] == piece
        expected = learn[position]
        assert all(flag == expected for flag in learn[position: position + len(piece)]), piece
        assert label == (token if expected else IGNORE), f"token {piece!r} at {position}"
        position += len(piece)
    assert position == len(text)


def test_truncation_that_removes_every_reply_drops_the_example(tiny_model):
    tok = load_tokenizer_for(tiny_model)
    example, truncated = encode_chat(tok, CONVERSATION, 12)
    assert example is None and truncated
    # counted once, as skipped: not also among the truncated conversations kept (it said "89 truncated" of 66 kept)
    examples, counts = encode_split(tok, [{"messages": CONVERSATION}], 12, skip_bad=True, where="train.jsonl")
    assert examples == [] and (counts["empty_after_truncation"], counts["truncated"]) == (1, 0)


def test_records_without_an_assistant_turn_are_an_error_or_skipped_and_counted(tiny_model):
    tok = load_tokenizer_for(tiny_model)
    records = [{"messages": CONVERSATION}, {"messages": [{"role": "user", "content": "hello?"}]}]
    with pytest.raises(UserError, match=r"train.jsonl:2: .*no assistant turn.*--skip-bad"):
        encode_split(tok, records, 200, skip_bad=False, where="train.jsonl")
    examples, counts = encode_split(tok, records, 200, skip_bad=True, where="train.jsonl")
    assert len(examples) == 1 and counts["no_assistant"] == 1


def test_packing_fills_rows_and_keeps_every_label():
    examples = [ChatExample(list(range(n)), [IGNORE] * (n // 2) + list(range(n // 2, n))) for n in (5, 9, 7, 11)]
    rows = pack(examples, 8)
    assert [len(r.ids) for r in rows[:-1]] == [8] * (len(rows) - 1)
    assert sum(len(r.ids) for r in rows) == 32
    assert sum(label != IGNORE for r in rows for label in r.labels) == sum(label != IGNORE for e in examples for label in e.labels)


def test_lora_sft_trains_adapters_only_and_registers_them_under_the_base(ws, lora_model, tiny_model):
    path = lora_model.path
    assert (path / "adapter_config.json").exists() and (path / "adapter_model.safetensors").exists()
    assert not (path / "model.safetensors").exists()
    weights = load_file(str(path / "adapter_model.safetensors"))
    assert weights and all("lora_" in name for name in weights)
    metrics = lora_model.lineage["metrics"]
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"]
    assert metrics["trainable_parameters"] == sum(t.numel() for t in weights.values())
    assert metrics["peak_memory_mb"] > 0
    reg = Registry.for_workspace(ws.root)
    parents = dict(reg.parents(lora_model.id))
    assert parents["base_model"].id == tiny_model.id and parents["trained_on"].name == "chats"
    assert json.loads((path / "llmkit.json").read_text())["base"]["path"] == str(tiny_model.path)
    # The template travels with the model, so `llmkit chat` renders turns the way training did.
    assert load_tokenizer_for(lora_model).chat_template


def test_merge_writes_a_standalone_model_with_the_same_outputs(ws, lora_model):
    from peft import PeftModel

    base, _ = load_causal_lm(resolve_model(str(lora_model.lineage["base"]["path"])))
    paired = PeftModel.from_pretrained(base, str(lora_model.path)).eval()
    lora_b = [p for n, p in paired.named_parameters() if "lora_B" in n]
    assert any(float(p.abs().max()) > 0 for p in lora_b), "training left LoRA B at zero: the test would be vacuous"
    merged = merge(lora_model.name, ws, Registry.for_workspace(ws.root))
    assert (merged.path / "model.safetensors").exists() and not (merged.path / "adapter_config.json").exists()
    standalone, _ = load_causal_lm(merged)
    x = torch.randint(0, base.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = paired(input_ids=x).logits, standalone(input_ids=x).logits
        plain = base.get_base_model()(input_ids=x).logits if hasattr(base, "get_base_model") else None
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert plain is None or not torch.allclose(plain, want, atol=1e-4)
    assert dict(Registry.for_workspace(ws.root).parents(merged.id))["merged_from"].id == lora_model.id


def test_interrupted_lora_run_resumes_to_the_same_adapter(ws):
    reg = Registry.for_workspace(ws.root)
    straight = sft(_cfg(name="resume-straight"), ws, reg)
    with pytest.raises(TrainingInterrupted) as stop:
        sft(_cfg(name="resume-cut"), ws, reg, stop_at_step=5)
    assert stop.value.step == 5
    resumed = sft(_cfg(resume=stop.value.run_id), ws, reg)
    a = load_file(str(straight.path / "adapter_model.safetensors"))
    b = load_file(str(resumed.path / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    assert resumed.lineage["metrics"]["steps"] == 12


def test_full_sft_with_packing_lowers_the_val_loss(ws, tiny_model):
    from llmkit.data.dataset import open_dataset
    from llmkit.train.supervised import collate, token_loss_sum

    reg = Registry.for_workspace(ws.root)
    cfg = _cfg(name="sft-full", method="full", packing=True, max_steps=30, batch_size=8, lr=3e-3, eval_every=10)
    model = sft(cfg, ws, reg)
    assert (model.path / "model.safetensors").exists()
    m = model.lineage["metrics"]
    assert m["trainable_parameters"] == m["total_parameters"]

    def val_loss(folder) -> float:
        lm, tok = load_causal_lm(resolve_model(str(folder)))
        val, _ = encode_split(tok, open_dataset(reg, "chats").records("val"), cfg.max_length, True, "val")
        batch = collate(val[: cfg.eval_max_examples], tok.pad_token_id)
        with torch.no_grad():
            total, n = token_loss_sum(lm, batch)
        return float(total) / n

    before, after = val_loss(tiny_model.path), val_loss(model.path)
    assert after < before - 0.05
    assert after == pytest.approx(m["val_loss"], rel=1e-4)


# Each bad input is its own test: one skipped or failed check never hides the others.
def test_lora_target_modules_that_match_nothing_are_an_error_listing_the_real_ones(ws):
    with pytest.raises(UserError, match=r"sft.lora.target_modules: nope matches no module.*q_proj"):
        sft(_cfg(lora=LoraConfig(target_modules=["nope"])), ws, Registry.for_workspace(ws.root))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU, where QLoRA runs")
def test_qlora_without_a_cuda_gpu_says_so_and_points_to_lora(ws):
    with pytest.raises(UserError, match=r"^sft.method = 'qlora' needs a CUDA GPU.*--method lora"):
        sft(_cfg(method="qlora"), ws, Registry.for_workspace(ws.root))


def test_an_unknown_base_model_is_an_error_naming_it(ws):
    with pytest.raises(UserError, match="no model 'missing-base'"):
        sft(_cfg(base="missing-base"), ws, Registry.for_workspace(ws.root))


def test_a_base_that_is_not_a_causal_lm_is_refused_before_it_loads(ws):
    """minilm-l6 loaded as a causal LM gets a language-model head of random weights: DPO trained and registered one."""
    registry = Registry.for_workspace(ws.root)
    runs = len(registry.list("run"))
    with pytest.raises(UserError, match=r"^minilm-l6 is an encoder without a language-model head; train sft takes causal"):
        sft(_cfg(base="minilm-l6"), ws, registry)
    assert len(registry.list("run")) == runs


def test_a_lora_target_the_model_lacks_names_the_section_of_the_command_run(ws):
    """train dpo --target-modules foo said 'sft.lora.target_modules': a user fixing a config file was sent elsewhere."""
    from llmkit.train.tuned_model import load_for_training

    cfg = _cfg(method="lora", lora=LoraConfig(r=4, alpha=8, target_modules=["foo"]))
    with pytest.raises(UserError, match=r"^dpo\.lora\.target_modules"):
        load_for_training(resolve_model("tiny-lm", Registry.for_workspace(ws.root)), cfg, "cpu", None, "dpo")


def test_full_tuning_of_a_lora_adapter_is_refused_up_front(ws, lora_model):
    """Its base loads frozen: the whole model was loaded before "nothing to train (no parameter requires a gradient)"."""
    with pytest.raises(UserError, match=r"sft.method = 'full': sft-lora:v\d+ is a LoRA adapter; merge it first"):
        sft(_cfg(base=lora_model.ref, method="full"), ws, Registry.for_workspace(ws.root))


def test_a_non_chat_dataset_is_an_error_naming_the_task_it_needs(ws):
    with pytest.raises(UserError, match="'lm' dataset; SFT needs one prepared with --task chat"):
        sft(_cfg(data="tiny"), ws, Registry.for_workspace(ws.root))


def test_a_base_with_pickled_weights_only_is_refused(ws, tiny_model, tmp_path: Path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_model.path / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickle weights only .*never unpickles.*safetensors"):
        sft(_cfg(base=str(pickled)), ws, Registry.for_workspace(ws.root))


def test_gradient_checkpointing_gives_the_same_adapter(ws):
    reg = Registry.for_workspace(ws.root)
    cfg = dict(max_steps=4, eval_every=4, lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    plain = sft(_cfg(name="gc-off", **cfg), ws, reg)
    checkpointed = sft(_cfg(name="gc-on", gradient_checkpointing=True, **cfg), ws, reg)
    a = load_file(str(plain.path / "adapter_model.safetensors"))
    b = load_file(str(checkpointed.path / "adapter_model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
    lora_b = [t for n, t in b.items() if "lora_B" in n]
    assert all(float(t.abs().max()) > 0 for t in lora_b), "some adapters got no gradient under checkpointing"
