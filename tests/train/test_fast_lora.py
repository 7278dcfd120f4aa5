"""The fast SFT path: HF weights into our Llama and back, LoRA exactly as peft computes and saves it, the
fallback to transformers + peft for other bases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from llmkit.config import LoraConfig, SftConfig
from llmkit.models.io import resolve_model
from llmkit.models.llama import from_hf_folder
from llmkit.registry import Registry
from llmkit.train import fast_lora
from llmkit.train.fast_lora import LoraLlama, fast_path_reason
from llmkit.train.lora import apply_lora, save_adapter, save_adapter_state
from llmkit.train.supervised import IGNORE, sft, token_loss_sum
from llmkit.workspace import Workspace
from tests import tiny_lm

tokenizer = pytest.fixture(scope="module")(tiny_lm.char_tokenizer)


def _save(model, tok, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_folder(tokenizer, tmp_path_factory) -> Path:
    """A tiny Llama with GQA, untied head and biases on attention and MLP, every weight random (norms too)."""
    model = tiny_lm.make_model(tokenizer, seed=1, num_key_value_heads=2, tie_word_embeddings=False,
                               attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in name else torch.randn_like(p) * 0.1)
    return _save(model, tokenizer, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def tied_folder(tokenizer, tmp_path_factory) -> Path:
    return _save(tiny_lm.train_tiny(tokenizer), tokenizer, tmp_path_factory.mktemp("tied"))


# The rest of the family the fast path takes: each with what sets it apart from the Llama above.
FAMILY = {
    "qwen2": ("Qwen2Config", {}),                                          # q/k/v biases, none on o
    "qwen3": ("Qwen3Config", {"head_dim": 24, "attention_bias": True}),    # q/k RMSNorm per head, an explicit head_dim
    "mistral": ("MistralConfig", {"sliding_window": 128}),                 # a window no shorter than the context
    "llama3-rope": ("LlamaConfig", {"rope_parameters": {                   # Llama 3.1's RoPE scaling
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}}),
}


def _family_folder(kind: str, tokenizer, folder: Path) -> Path:
    import transformers
    from transformers import AutoModelForCausalLM

    name, extra = FAMILY[kind]
    torch.manual_seed(2)
    config = getattr(transformers, name)(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128, tie_word_embeddings=kind != "qwen2", **extra)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if "norm" in n else torch.randn_like(p) * 0.1)
    return _save(model, tokenizer, folder)


@pytest.fixture(scope="module", params=list(FAMILY))
def family_folder(request, tokenizer, tmp_path_factory) -> Path:
    return _family_folder(request.param, tokenizer, tmp_path_factory.mktemp(request.param))


def _hf(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True).eval()


def _batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (3, 20), generator=g)
    labels, mask = ids.clone(), torch.ones_like(ids)
    labels[:, :6] = IGNORE            # a prompt
    ids[2, 15:], labels[2, 15:], mask[2, 15:] = 0, IGNORE, 0  # right padding
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("folder", ["llama_folder", "tied_folder"])
def test_hf_weights_load_into_our_llama_with_hf_logits_and_save_back_unchanged(folder, request):
    _loads_with_hf_logits_and_saves_back(request.getfixturevalue(folder))


def test_the_family_loads_with_hf_logits_saves_back_and_trains_a_step_as_peft_does(family_folder):
    _loads_with_hf_logits_and_saves_back(family_folder)
    _a_training_step_matches_peft(family_folder)
    from transformers import AutoModelForCausalLM

    assert type(from_hf_folder(family_folder).to_hf()) is type(AutoModelForCausalLM.from_pretrained(str(family_folder)))
    assert fast_path_reason(resolve_model(str(family_folder)), SftConfig(max_length=128)) is None


def _loads_with_hf_logits_and_saves_back(path: Path) -> None:
    hf, ours = _hf(path), from_hf_folder(path).eval()
    x = _batch(hf.config.vocab_size)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(input_ids=x).logits, atol=1e-5, rtol=1e-5)
    want = {k: v for k, v in hf.state_dict().items() if not (hf.config.tie_word_embeddings and k == "lm_head.weight")}
    got = ours.hf_state_dict()
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert torch.equal(got[name], value), name


def test_a_bf16_base_keeps_its_weights_bf16_and_its_norms_and_residual_fp32(llama_folder):
    ours = from_hf_folder(llama_folder, torch.bfloat16)
    assert ours.layers[0].qkv.weight.dtype == torch.bfloat16 and ours.embed.weight.dtype == torch.bfloat16
    assert ours.layers[0].attn_norm.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = ours.hidden_states(_batch(ours.config.vocab_size)["input_ids"])
    assert hidden.dtype == torch.float32


def _peft_and_ours(folder: Path, lora: LoraConfig, targets: list[str], seed: int = 5):
    hf, llama = _hf(folder), from_hf_folder(folder)
    torch.manual_seed(seed)
    paired = apply_lora(hf, lora, "CAUSAL_LM", "sft.lora")
    torch.manual_seed(seed)
    ours = LoraLlama(llama, targets, lora)
    return paired, ours


def _peft_state(paired, grads: bool = False) -> dict[str, torch.Tensor]:
    return {n.replace(".default", ""): (p.grad if grads else p.detach()) for n, p in paired.named_parameters() if "lora_" in n}


def _our_grads(ours: LoraLlama) -> dict[str, torch.Tensor]:
    out = {}
    for i, parent, name, module in ours.adapters():
        prefix = f"base_model.model.model.layers.{i}.{parent}.{name}."
        out[prefix + "lora_A.weight"], out[prefix + "lora_B.weight"] = module.lora_A[name].grad, module.lora_B[name].grad
    return out


def test_a_seed_gives_peft_initial_adapters_and_a_training_step_matches_peft(llama_folder):
    _a_training_step_matches_peft(llama_folder)


def _a_training_step_matches_peft(folder: Path) -> None:
    lora = LoraConfig(r=4, alpha=8, dropout=0.0)
    paired, ours = _peft_and_ours(folder, lora, list(fast_lora.PROJECTIONS))
    start = _peft_state(paired)
    assert ours.adapter_state().keys() == start.keys() and len(start) == 2 * 7 * 2
    for name, value in start.items():
        assert torch.equal(ours.adapter_state()[name], value), name
    with torch.no_grad():  # B = 0 would make the first step's loss the base's: give B values
        for n, p in paired.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    ours.load_adapter_state(_peft_state(paired))
    batch = _batch(paired.config.vocab_size)
    optimizers = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (paired, ours)]
    for _ in range(2):
        want, n_want = token_loss_sum(paired, batch)
        got, n_got = fast_lora.token_loss_sum(ours, batch)
        assert n_got == n_want
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
        (want / n_want).backward()
        (got / n_got).backward()
        peft_grads, our_grads = _peft_state(paired, grads=True), _our_grads(ours)
        for name, grad in peft_grads.items():
            torch.testing.assert_close(our_grads[name], grad, atol=1e-5, rtol=1e-4)
        for opt in optimizers:
            opt.step()
            opt.zero_grad()


def test_a_bf16_training_step_matches_peft_under_autocast(llama_folder):
    """bf16 as training runs it: our frozen base stored in bf16 (the work buffers, the LoRA update inside the base GEMM,
    the input rounded once, where bf16 is emulated) against peft's fp32 weights cast by autocast. Both round to bf16,
    at different places: the losses agree to bf16's precision and each adapter's gradient points the same way."""
    lora = LoraConfig(r=4, alpha=8, dropout=0.0)
    paired, ours = _peft_and_ours(llama_folder, lora, list(fast_lora.PROJECTIONS))
    with torch.no_grad():
        for n, p in paired.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    ours = LoraLlama(from_hf_folder(llama_folder, torch.bfloat16), list(fast_lora.PROJECTIONS), lora)
    ours.load_adapter_state(_peft_state(paired))
    batch = _batch(paired.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, n_want = token_loss_sum(paired, batch)
        got, n_got = fast_lora.token_loss_sum(ours, batch)
    assert n_got == n_want
    assert float(got) == pytest.approx(float(want), rel=1e-2)
    (want / n_want).backward()
    (got / n_got).backward()
    peft_grads, our_grads = _peft_state(paired, grads=True), _our_grads(ours)
    for name, grad in peft_grads.items():
        cosine = F.cosine_similarity(our_grads[name].flatten().float(), grad.flatten().float(), dim=0)
        assert cosine > 0.99, (name, float(cosine))
        assert float(our_grads[name].norm()) == pytest.approx(float(grad.norm()), rel=0.05), name


@pytest.mark.parametrize("targets", [["all-linear"], ["q_proj", "v_proj", "down_proj"]])
def test_the_saved_adapter_loaded_by_peft_gives_our_logits_and_peft_config(llama_folder, tmp_path, tokenizer, targets):
    from peft import PeftModel

    lora = LoraConfig(r=4, alpha=16, dropout=0.1, target_modules=targets)
    paired, ours = _peft_and_ours(llama_folder, lora, fast_lora.lora_targets(targets))
    with torch.no_grad():
        for _, _, name, module in ours.adapters():
            module.lora_B[name].normal_(0, 0.1)
    base = resolve_model(str(llama_folder))
    save_adapter_state(ours.adapter_state(), lora, fast_lora.peft_target_modules(ours, targets), tokenizer, tmp_path / "fast", base, {})
    save_adapter(paired, tokenizer, tmp_path / "peft", base, {})
    for file in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "llmkit.json"):
        assert (tmp_path / "fast" / file).exists()
    mine, peft_cfg = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("fast", "peft"))
    assert sorted(mine.pop("target_modules")) == sorted(peft_cfg.pop("target_modules"))
    assert mine == peft_cfg
    loaded = PeftModel.from_pretrained(_hf(llama_folder), str(tmp_path / "fast")).eval()
    x = _batch(paired.config.vocab_size)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), loaded(input_ids=x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("config", [{}, {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
                                    {"hidden_act": "gelu"}])
def test_the_fast_path_takes_exactly_the_llamas_the_fast_decoder_takes(tokenizer, tmp_path, config):
    from transformers import AutoModelForCausalLM

    from llmkit.runtime.fast_llama import unsupported_reason

    model = tiny_lm.make_model(tokenizer)
    for key, value in config.items():
        setattr(model.config, key, value)
    folder = _save(model, tokenizer, tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(str(folder))
    assert fast_path_reason(resolve_model(str(folder)), SftConfig()) == unsupported_reason(reloaded)
    assert (unsupported_reason(reloaded) is None) == ("hidden_act" not in config)  # RoPE scalings are taken


def test_other_bases_are_named_with_the_reason_and_train_through_peft(lm_workspace, chat_data, tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=1, n_head=2))
    folder = _save(gpt2, tokenizer, tmp_path / "gpt2")
    cfg = SftConfig(base=str(folder), data=chat_data, max_steps=2, batch_size=2, max_length=96, skip_bad=True,
                    eval_max_examples=2, name="gpt2-sft")
    assert fast_path_reason(resolve_model(str(folder)), cfg) == "GPT2LMHeadModel is not a Llama, Mistral, Qwen2 or Qwen3 model"
    assert "beyond the attention" in fast_path_reason(resolve_model(str(folder)), cfg.model_copy(
        update={"lora": LoraConfig(target_modules=["lm_head"])}))
    console = Console(record=True, width=200)
    ws = Workspace.open(lm_workspace)
    model = sft(cfg, ws, Registry.for_workspace(ws.root), console=console)
    assert "training path: transformers + peft (GPT2LMHeadModel is not a Llama, Mistral, Qwen2 or Qwen3 model)" in console.export_text()
    assert model.lineage["metrics"]["path"] == "peft" and (model.path / "adapter_config.json").exists()


def test_sft_on_a_llama_base_takes_the_fast_path_and_says_so(lm_workspace, tiny_model, chat_data):
    console = Console(record=True, width=200)
    ws = Workspace.open(lm_workspace)
    cfg = SftConfig(base="tiny-lm", data=chat_data, max_steps=2, batch_size=2, max_length=96, skip_bad=True,
                    eval_max_examples=2, name="fast-sft", lora=LoraConfig(r=4, alpha=8))
    model = sft(cfg, ws, Registry.for_workspace(ws.root), console=console)
    said = console.export_text()
    assert "training path: fast Llama" in said
    assert model.lineage["metrics"]["path"] == "fast"
    # compile: auto (the default) decided, said why, and the run records it: 2 steps never repay a compile
    assert cfg.compile == "auto" and model.lineage["metrics"]["compiled"] is False
    assert "compile: auto: eager (" in said  # why depends on the CPU: 2 steps in bf16, fp32 without bf16 instructions


def test_compile_auto_compiles_only_long_bf16_cpu_runs_of_real_sized_models(llama_folder, monkeypatch):
    from llmkit.models.io import Model

    cfg = SftConfig(base="x", method="lora", lora=LoraConfig(r=4, alpha=8, dropout=0.0), packing=True)
    model = fast_lora.load_fast(Model(llama_folder, "tiny"), cfg, "bf16", "cpu")
    assert all(block._compiled_call_impl is None for block in model.model.layers)  # auto: nothing compiled at load
    reason = fast_lora.auto_compile_reason
    assert "parameters" in reason(model, 10_000, "bf16", "cpu")                 # a tiny model
    monkeypatch.setattr(fast_lora, "AUTO_COMPILE_PARAMS", 0)
    assert reason(model, fast_lora.AUTO_COMPILE_STEPS, "bf16", "cpu") is None
    assert "steps" in reason(model, fast_lora.AUTO_COMPILE_STEPS - 1, "bf16", "cpu")
    assert "fp32" in reason(model, 10_000, "fp32", "cpu") and "cuda" in reason(model, 10_000, "bf16", "cuda")
    from torch._inductor.cpp_builder import cpp_compiler_search  # inductor's search, cached per process

    with monkeypatch.context() as m:
        m.setenv("PATH", "/nonexistent")
        m.delenv("CXX", raising=False)
        cpp_compiler_search.cache_clear()
        try:
            assert "C++ compiler" in reason(model, 10_000, "bf16", "cpu")
        finally:
            cpp_compiler_search.cache_clear()
    assert "--packing" in reason(model, 10_000, "bf16", "cpu", packing=False)  # rows of many lengths: many graphs
    said: list[str] = []
    console = type("Console", (), {"print": lambda self, line: said.append(line)})()
    assert fast_lora.compile_if_it_pays(model, cfg, 10, "bf16", console) is False
    assert all(block._compiled_call_impl is None for block in model.model.layers)
    assert fast_lora.compile_if_it_pays(model, cfg, 10_000, "bf16", console) is True
    assert all(block._compiled_call_impl is not None for block in model.model.layers)  # compiled in place, lazily
    assert said[0].startswith("compile: auto: eager (10 steps") and said[1].startswith("compile: auto: compiling")
    # set either way, compile is what the user said, whatever the run
    fresh = fast_lora.load_fast(Model(llama_folder, "tiny"), cfg.model_copy(update={"compile": False}), "bf16", "cpu")
    assert fast_lora.compile_if_it_pays(fresh, cfg.model_copy(update={"compile": False}), 10_000, "bf16") is False
    assert all(block._compiled_call_impl is None for block in fresh.model.layers)


def test_a_sliding_window_shorter_than_the_rows_takes_the_hf_path(tokenizer, tmp_path):
    # within its window a Mistral attends as a Llama does; past it the fast path would attend too far back
    folder = _family_folder("mistral", tokenizer, tmp_path / "mistral")
    assert fast_path_reason(resolve_model(str(folder)), SftConfig(max_length=128)) is None
    assert fast_path_reason(resolve_model(str(folder)), SftConfig(max_length=256)) == \
        "sliding_window 128 is shorter than the rows (256 tokens)"


def test_a_window_only_layers_typed_sliding_use_decides_and_partial_rotary_is_refused():
    # Qwen2/2.5 name a sliding_window that layers below max_window_layers do not use; a partial rotary factor in
    # rope_parameters (transformers 5 keeps it there) rotates part of each head, which the fast path's RoPE does not
    from transformers import LlamaConfig, Qwen2Config

    from llmkit.train.fast_lora import architecture_reason

    small = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=256, use_sliding_window=True, sliding_window=64)
    assert architecture_reason(Qwen2Config(**small, max_window_layers=2), 128) is None  # no layer slides
    assert architecture_reason(Qwen2Config(**small, max_window_layers=1), 128) == \
        "sliding_window 64 is shorter than the rows (128 tokens)"
    partial = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})
    assert architecture_reason(partial, 64) == "partial rotary embeddings are not implemented"


def test_lora_dropout_drops_the_adapters_input_in_training_only(llama_folder):
    # lora.dropout was configured and trained without: each adapted projection draws its own mask in train mode
    from llmkit.models.llama import from_hf_folder

    torch.manual_seed(0)
    ours = LoraLlama(from_hf_folder(llama_folder), ["q_proj", "v_proj"], LoraConfig(r=4, alpha=8, dropout=0.5))
    with torch.no_grad():
        for _, _, name, module in ours.adapters():
            module.lora_B[name].normal_(0, 0.5)
    x = _batch(ours.model.config.vocab_size)["input_ids"]
    with torch.no_grad():
        ours.train()
        first, second = ours(x), ours(x)
        ours.eval()
        assert not torch.allclose(first, second) and torch.equal(ours(x), ours(x))
        with ours.adapters_off():
            base = ours(x)
        assert not torch.allclose(ours(x), base)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("packed", [False, True])
def test_a_block_compiles_as_one_graph(llama_folder, precision, packed, monkeypatch):
    """`--compile` pays only when dynamo traces a block whole: a graph break (reading /proc/cpuinfo inside a
    dtype check did it to every linear layer) leaves pieces that fuse nothing, and compiled ran no faster."""
    from contextlib import nullcontext

    from llmkit.models import attention as attention_module
    from llmkit.models.io import Model
    from llmkit.models.llama import document_mask

    monkeypatch.setattr(attention_module, "cpu_has_fast_bf16", lambda: True)  # our bf16 attention traced too
    cfg = SftConfig(base="x", method="lora", lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    model = fast_lora.load_fast(Model(llama_folder, "tiny"), cfg, precision, "cpu").train()
    llama, T = model.model, 16
    x = torch.randn(2, T, llama.config.hidden_size, requires_grad=True)
    cos, sin, mask = llama.cos[:T], llama.sin[:T], None
    if packed:
        mask = document_mask(torch.stack([torch.cat([torch.arange(6), torch.arange(T - 6)]), torch.arange(T)]))
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
        explanation = torch._dynamo.explain(llama.layers[0])(x, cos, sin, mask)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons
