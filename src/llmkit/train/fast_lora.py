"""SFT of Llama-family bases on our training Llama (models/llama.py): LoRA deltas on fused projections.

Why not transformers + peft for these: the HF module computes q, k, v and gate, up as separate
matmuls, keeps its weights in fp32 and casts each to bf16 on every forward under autocast, and
returns logits for every position (a 49k vocabulary makes them the largest tensors of a step).
Here the frozen base is loaded straight into the fused layout, in bf16 when training in bf16 (half
the memory, no per-step casts), and the loss runs through `chunked_loss` on labelled positions only.
Every matmul goes through `bf16_matmul.linear`: autocast's bf16 arithmetic, as an fp32 GEMM on CPUs
whose bf16 GEMM is slow.

LoRA is peft's, projection by projection: each adapted projection (q/k/v/o/gate/up/down) has its own
A (r x in) and B (out x r), the update is B A x * alpha / r, dropout on the adapter's input as
configured; adapters are created in peft's order with peft's initialisation, so a seed gives peft's
starting weights. On a fused projection the A's of its parts run as one matmul and the B's as one
block-diagonal matmul. `adapter_state` names the weights as a PeftModel saves them, so the adapter
folder is an ordinary PEFT adapter (merge, serve, export and peft's loader take it unchanged).

Which bases: what `runtime.fast_llama.unsupported_reason` accepts (Llama, Mistral, Qwen2 and Qwen3 with SiLU and the
RoPE scalings transformers tabulates, a sliding window no shorter than the rows); for anything else
`fast_path_reason` says why, and SFT takes the peft + HF path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmkit.config import LoraConfig, SftConfig
from llmkit.models.io import Model, is_adapter
from llmkit.models.llama import Llama, from_hf_folder
from llmkit.train.bf16_matmul import linear, linear_plus
from llmkit.train.chunked_loss import shifted_loss_sum
from llmkit.train.lora import ALL_LINEAR

# Projection -> (our fused module, its HF parent); in the order HF's modules run and peft creates adapters.
PROJECTIONS: dict[str, tuple[str, str]] = {
    "q_proj": ("qkv", "self_attn"), "k_proj": ("qkv", "self_attn"), "v_proj": ("qkv", "self_attn"),
    "o_proj": ("o", "self_attn"), "gate_proj": ("gate_up", "mlp"), "up_proj": ("gate_up", "mlp"),
    "down_proj": ("down", "mlp"),
}


def lora_targets(target_modules: list[str]) -> list[str] | None:
    """The projections `target_modules` adapts, in layer order; None when it names modules beyond them."""
    if target_modules == [ALL_LINEAR]:
        return list(PROJECTIONS)
    if not set(target_modules) <= set(PROJECTIONS):
        return None
    return [p for p in PROJECTIONS if p in target_modules]


def fast_path_reason(base: Model, cfg: SftConfig) -> str | None:
    """Why this SFT run cannot take the fast path (None: it can). Never an error: the caller falls back."""
    if cfg.method == "qlora":
        return "QLoRA trains on a 4-bit HF base"
    if is_adapter(base.path):
        return "the base is itself a LoRA adapter"
    if (base.lineage or {}).get("quantization"):
        return "the base is quantized"
    if not ((base.path / "model.safetensors").exists() or (base.path / "model.safetensors.index.json").exists()):
        return "the base has no safetensors weights"
    if cfg.method == "lora" and lora_targets(cfg.lora.target_modules) is None:
        return f"lora.target_modules {cfg.lora.target_modules} reach beyond the attention and MLP projections"
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(base.path), trust_remote_code=False)
    except Exception:  # the HF path loads it again and reports the problem in its own words
        return "its config.json does not load as a transformers config"
    return architecture_reason(config, cfg.max_length)


def architecture_reason(config, max_length: int | None = None) -> str | None:
    """What `runtime.fast_llama.unsupported_reason` says of the HF module `config` describes, read from the config
    alone: building that module, even on the meta device, costs ~125 MB of transformers imports. A sliding window
    matters only if training rows are longer than it (`max_length`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from llmkit.models.llama import FAMILY, sliding_window_reason
    from llmkit.models.rope import rope_reason

    cls = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, f"model_type '{config.model_type}'")
    if config.model_type not in FAMILY:
        return f"{cls} is not a Llama, Mistral, Qwen2 or Qwen3 model"
    reason = rope_reason(config)
    if reason:
        return reason
    if config.hidden_act != "silu":
        return f"hidden_act '{config.hidden_act}' is not implemented"
    if config.num_attention_heads % config.num_key_value_heads:
        return "num_attention_heads is not a multiple of num_key_value_heads"
    return sliding_window_reason(config, max_length or config.max_position_embeddings,
                                 "rows" if max_length else "context")


class LoraLinear(nn.Module):
    """A frozen linear layer (possibly several projections fused along its outputs) plus peft-style LoRA
    updates on some of those projections. `parts`: (projection name, output width) in output order."""

    def __init__(self, base: nn.Linear, parts: list[tuple[str, int]], targets: list[str], lora: LoraConfig):
        super().__init__()
        self.base, self.parts, self.r, self.scaling = base, parts, lora.r, lora.alpha / lora.r
        self.lora_A, self.lora_B = nn.ParameterDict(), nn.ParameterDict()
        self.dropout = nn.Dropout(lora.dropout) if lora.dropout > 0 else None
        self.enabled = True  # off: the base alone (LoraLlama.adapters_off, the reference model of GRPO)
        for name, width in parts:
            if name not in targets:
                continue
            # Made as peft makes them (nn.Linear's own init, then kaiming A and zero B), so the RNG gives peft's values.
            a = nn.Linear(base.in_features, lora.r, bias=False, device=base.weight.device)
            b = nn.Linear(lora.r, width, bias=False, device=base.weight.device)
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            nn.init.zeros_(b.weight)
            self.lora_A[name], self.lora_B[name] = a.weight, b.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        names = list(self.lora_A)
        if not names or not self.enabled:
            return linear(x, self.base.weight, self.base.bias)
        if self.dropout is None:  # one input for every part: their A's as one matmul
            a = self.lora_A[names[0]] if len(names) == 1 else torch.cat([self.lora_A[n] for n in names])
            h = linear(x, a)                                                 # (..., parts * r)
        else:  # each projection draws its own dropout mask, as peft's separate modules do
            h = torch.cat([linear(self.dropout(x), self.lora_A[n]) for n in names], dim=-1)
        return linear_plus(x, self.base.weight, self.base.bias, h, self._stacked_b())  # y += h B^T in the GEMM

    def _stacked_b(self) -> torch.Tensor:
        """The B's as one (out, parts * r) block-diagonal matrix, scaled; zero rows for unadapted parts."""
        width, column, rows = len(self.lora_B) * self.r, 0, []
        for name, out in self.parts:
            if name in self.lora_B:
                rows.append(F.pad(self.lora_B[name] * self.scaling, (column, width - column - self.r)))
                column += self.r
            else:
                rows.append(self.base.weight.new_zeros(out, width, dtype=torch.float32))
        return rows[0] if len(rows) == 1 else torch.cat(rows)


class LoraLlama(nn.Module):
    """Our Llama with its weights frozen and LoRA on the chosen projections of every layer."""

    def __init__(self, model: Llama, targets: list[str], lora: LoraConfig):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.targets = targets
        for block in model.layers:
            q, kv = block.n_head * block.head_dim, block.n_kv * block.head_dim
            groups = {"qkv": [("q_proj", q), ("k_proj", kv), ("v_proj", kv)], "o": [("o_proj", block.o.out_features)],
                      "gate_up": [("gate_proj", block.down.in_features), ("up_proj", block.down.in_features)],
                      "down": [("down_proj", block.down.out_features)]}
            for attr, parts in groups.items():  # layer order = HF's module order = peft's creation order
                setattr(block, attr, LoraLinear(getattr(block, attr), parts, targets, lora))

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.lm_head

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.hidden_states(input_ids, position_ids)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def adapters(self):
        """(layer index, HF parent, projection, LoraLinear) of every adapted projection."""
        for i, block in enumerate(self.model.layers):
            for attr in ("qkv", "o", "gate_up", "down"):
                module = getattr(block, attr)
                for name in module.lora_A:
                    yield i, PROJECTIONS[name][1], name, module

    @contextmanager
    def adapters_off(self) -> Iterator[None]:
        """The frozen base alone inside the block: the reference model, with no second copy of it."""
        modules = {id(m): m for _, _, _, m in self.adapters()}.values()
        for m in modules:
            m.enabled = False
        try:
            yield
        finally:
            for m in modules:
                m.enabled = True

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The adapter weights under the names a PeftModel saves them with (adapter name dropped)."""
        state = {}
        for i, parent, name, module in self.adapters():
            prefix = f"base_model.model.model.layers.{i}.{parent}.{name}."
            state[prefix + "lora_A.weight"] = module.lora_A[name].detach().float().contiguous().clone()
            state[prefix + "lora_B.weight"] = module.lora_B[name].detach().float().contiguous().clone()
        return state

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        """Adapter weights named as `adapter_state` gives them (a PEFT adapter file)."""
        with torch.no_grad():
            for i, parent, name, module in self.adapters():
                prefix = f"base_model.model.model.layers.{i}.{parent}.{name}."
                module.lora_A[name].copy_(state[prefix + "lora_A.weight"])
                module.lora_B[name].copy_(state[prefix + "lora_B.weight"])


def peft_target_modules(model: LoraLlama, target_modules: list[str]) -> list[str]:
    """target_modules as peft writes them into adapter_config.json: all-linear resolved to every adapted module's
    path, a list of names as given."""
    if target_modules == [ALL_LINEAR]:
        return [f"model.layers.{i}.{parent}.{name}" for i, parent, name, _ in model.adapters()]
    return list(target_modules)


def load_fast(base: Model, cfg: SftConfig, precision: str, device: str) -> nn.Module:
    """The model SFT trains on the fast path: LoraLlama over a frozen base (bf16 when training in bf16),
    or for full fine-tuning our Llama in fp32 with every weight trainable."""
    frozen_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    llama = from_hf_folder(base.path, frozen_dtype if cfg.method == "lora" else torch.float32).to(device)
    llama.checkpointing = cfg.gradient_checkpointing
    if cfg.method != "lora":
        return compile_blocks(llama) if cfg.compile is True else llama
    torch.manual_seed(cfg.seed)  # the adapters' initial weights
    model = LoraLlama(llama, lora_targets(cfg.lora.target_modules) or [], cfg.lora)
    return compile_blocks(model) if cfg.compile is True else model


# `compile: auto` compiles where it was measured to pay. smollm2-135m, LoRA, 4 x 256 tokens, 2 cores with AVX512-BF16:
# a compile costs the first step 23 s from a cold cache (5 s warm) and saves 0.27 s on every later one (0.90 against
# 1.17 s), so it pays from ~90 steps; 200 leaves room for jobs that gain less. Not measured: GPUs, fp32, small models.
AUTO_COMPILE_STEPS = 200
AUTO_COMPILE_PARAMS = 50_000_000


def auto_compile_reason(model: nn.Module, steps: int, precision: str, device: str, packing: bool = True) -> str | None:
    """Why `compile: auto` leaves this run eager; None: compile it. `packing`: every row is max_length long (blocks are
    compiled for fixed shapes: rows of varying length would recompile for each new one)."""
    if not packing:
        return "rows of varying length would compile again for each new length; --packing makes them one"
    if device != "cpu":
        return f"measured on CPUs only; --compile compiles on {device}"
    if precision != "bf16":
        return f"measured to pay in bf16, not {precision}"
    if steps < AUTO_COMPILE_STEPS:
        return f"{steps} steps do not repay a compile (from {AUTO_COMPILE_STEPS})"
    if sum(p.numel() for p in model.parameters()) < AUTO_COMPILE_PARAMS:
        return f"a model under {AUTO_COMPILE_PARAMS // 1_000_000}M parameters gains too little"
    if not _inductor_finds_a_compiler():
        return "no C++ compiler found (torch.compile needs one on a CPU)"
    return None


def _inductor_finds_a_compiler() -> bool:
    """Whether inductor's own search (CXX, then its configured names) finds a working C++ compiler."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or whatever a half-installed toolchain raises
        return False
    return True


def compile_if_it_pays(model: nn.Module, cfg: SftConfig, steps: int, precision: str, console=None) -> bool:
    """`compile: auto`: compile the blocks in place when `auto_compile_reason` finds nothing against it."""
    if cfg.compile != "auto":
        return cfg.compile is True
    device = next(model.parameters()).device.type
    reason = auto_compile_reason(model, steps, precision, device, cfg.packing)
    if console is not None:
        console.print("compile: auto: " + (f"eager ({reason})" if reason else
                                           f"compiling each block ({steps} steps; the first one pays the compile)"))
    if reason is None:
        compile_blocks(model)
    return reason is None


def compile_blocks(model: nn.Module) -> nn.Module:
    """Each transformer block compiled in place (`nn.Module.compile`: same parameters, same state dict names).
    Blocks rather than the whole model: the loss calls `hidden_states`, not `forward`, and every block has
    the same shapes, so one compiled graph serves all of them."""
    for block in model.model.layers if isinstance(model, LoraLlama) else model.layers:
        block.compile(dynamic=False)
    return model


def token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token loss over labelled tokens, and their count (right padding needs no mask: causal
    attention never lets a real token see the padding after it). Packed rows carry position_ids."""
    hidden = model.hidden_states(batch["input_ids"], batch.get("position_ids"))
    return shifted_loss_sum(hidden, model.lm_head.weight, batch["labels"])
