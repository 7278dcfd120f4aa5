"""The Llama model we train: nanoGPT-sized code, Hugging Face-compatible weights.

Training runs this module rather than `transformers.LlamaForCausalLM` because at llmkit's sizes the
HF module's per-call machinery (mask and cache plumbing, output objects, hooks) costs as much as
the arithmetic, and separate q/k/v and gate/up matmuls are slower than fused ones. The maths is
HF's Llama exactly (RMSNorm, RoPE with rotate-half, SwiGLU, GQA), so `to_hf()` hands the weights to
a `LlamaForCausalLM` that gives the same logits and saves as a normal HF folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llmkit.models.attention import attention

if TYPE_CHECKING:  # the HF modeling module takes seconds to import; only to_hf() needs it
    from transformers import LlamaConfig, LlamaForCausalLM


# The family's blocks differ in biases and one norm (transformers' modeling_{llama,mistral,qwen2,qwen3}):
# model_type -> (q/k/v bias, o bias, mlp bias, RMSNorm of each q and k head), from the config.
FAMILY = ("llama", "mistral", "qwen2", "qwen3")


def block_options(cfg) -> tuple[bool, bool, bool, bool]:
    kind = getattr(cfg, "model_type", "llama")
    attention_bias, mlp_bias = bool(getattr(cfg, "attention_bias", False)), bool(getattr(cfg, "mlp_bias", False))
    if kind == "qwen2":
        return True, False, False, False
    if kind == "qwen3":
        return attention_bias, attention_bias, False, True
    if kind == "mistral":
        return False, False, False, False
    return attention_bias, attention_bias, mlp_bias, False


def sliding_window_reason(cfg, longest: int, what: str = "context") -> str | None:
    """Why attention over `longest` tokens would not be the model's own: a sliding window shorter than that. Mistral
    applies its window to every layer; Qwen2/3 only to layers typed "sliding_attention"."""
    window, layer_types = getattr(cfg, "sliding_window", None), getattr(cfg, "layer_types", None)
    uses_window = layer_types is None or getattr(cfg, "model_type", None) == "mistral" or "sliding_attention" in layer_types
    if window is not None and uses_window and window < longest:
        return f"sliding_window {window} is shorter than the {what} ({longest} tokens)"
    return None


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        c, self.n_head, self.n_kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or c // self.n_head
        self.eps, self.dropout = cfg.rms_norm_eps, getattr(cfg, "attention_dropout", 0.0)
        qkv_bias, o_bias, mlp_bias, qk_norm = block_options(cfg)
        self.attn_norm = nn.Parameter(torch.ones(c))
        self.qkv = nn.Linear(c, (self.n_head + 2 * self.n_kv) * self.head_dim, bias=qkv_bias)
        self.o = nn.Linear(self.n_head * self.head_dim, c, bias=o_bias)
        # Qwen3: an RMSNorm over each head's features of q and k, before RoPE
        self.q_norm = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        self.mlp_norm = nn.Parameter(torch.ones(c))
        self.gate_up = nn.Linear(c, 2 * cfg.intermediate_size, bias=mlp_bias)
        self.down = nn.Linear(cfg.intermediate_size, c, bias=mlp_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """mask: None for plain causal attention, else (B, 1, T, T) booleans (True: may attend)."""
        B, T, C = x.shape
        h = F.rms_norm(x, (C,), self.attn_norm, self.eps)
        q, k, v = self.qkv(h).split([self.n_head * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        # v on its own storage: as a view it would keep the whole q/k/v output alive for attention's backward (q and
        # k are new tensors after RoPE), 1.6 MB a layer of a smollm2-135m LoRA step for a 0.4 MB copy
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2).contiguous()
        if self.q_norm is not None:
            q = F.rms_norm(q.float(), (self.head_dim,), self.q_norm, self.eps).to(q.dtype)
            k = F.rms_norm(k.float(), (self.head_dim,), self.k_norm, self.eps).to(k.dtype)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        y = attention(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        h = F.rms_norm(x, (C,), self.mlp_norm, self.eps)
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return x + self.down(swiglu(gate, up))


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up, keeping for backward only gate and up (views of the gate/up projection's output, which the
    projection keeps anyway) and recomputing silu(gate) there. Autograd's silu and mul would also keep silu(gate), a
    third (B, T, intermediate) tensor per layer: 90 MB of a smollm2-135m LoRA step at 4 x 256 tokens in bf16.
    Same arithmetic as `F.silu(gate) * up` and its autograd, to the bit."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        gate, up = ctx.saved_tensors
        grad_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        return grad_gate, grad_up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _SwiGLU.apply(gate, up) if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad) \
        else F.silu(gate) * up


def document_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) causal attention within documents of packed rows, from their position ids (B, T)."""
    starts = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1
    doc = starts.cumsum(-1)                                               # (B, T): document index per token
    T = position_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril()
    return ((doc[:, :, None] == doc[:, None, :]) & causal).unsqueeze(1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.checkpointing = False  # activation checkpointing, block by block
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = self._rope_tables()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)

    def _rope_tables(self, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every position as transformers' rotary embedding computes them, scalings (llama3, yarn,
        linear) and their attention factor included (models.rope)."""
        from llmkit.models.rope import inv_freq_and_scaling

        cfg, head_dim = self.config, self.layers[0].head_dim
        inv_freq, scaling = inv_freq_and_scaling(cfg, head_dim)
        freqs = torch.outer(torch.arange(length or cfg.max_position_embeddings).float(), inv_freq)  # (T_max, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T_max, hs)
        return emb.cos() * scaling, emb.sin() * scaling

    def _init(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(self, input_ids: torch.Tensor, hidden: bool = False) -> torch.Tensor:
        """Logits (B, T, V); with `hidden`, the final normed states (B, T, C) instead, for a loss that applies the
        head chunk by chunk (train/chunked_loss) and never holds all the logits. Through forward rather than
        `hidden_states` so that DDP and torch.compile wrappers see the call."""
        T = input_ids.shape[1]
        if T > self.cos.shape[0]:
            raise ValueError(f"sequence of {T} tokens is longer than the context {self.cos.shape[0]}")
        states = self.hidden_states(input_ids)
        return states if hidden else self.lm_head(states)  # (B, T, C) or (B, T, V)

    def hidden_states(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The final normed states (B, T, C) that the head turns into logits.

        position_ids (B, T), for rows packed with several documents: each document's positions count from
        its own start, and a token attends only to earlier tokens of its document (a new document starts
        wherever the position does not follow the previous one by 1: transformers' rule for packed rows)."""
        T = input_ids.shape[1]
        longest = T if position_ids is None else int(position_ids.max()) + 1
        if longest > self.cos.shape[0]:  # past max_position_embeddings: RoPE goes on, as HF's computes it per call
            self.cos, self.sin = (t.to(self.cos.device) for t in self._rope_tables(longest))
        # The residual stream stays fp32 when the frozen weights are bf16 (as HF's does under autocast
        # with fp32 weights): a bf16 stream would round every layer's sum.
        x = self.embed(input_ids).float()  # (B, T, C)
        if position_ids is None:
            cos, sin, mask = self.cos[:T], self.sin[:T], None
        else:
            cos, sin = self.cos[position_ids].unsqueeze(1), self.sin[position_ids].unsqueeze(1)  # (B, 1, T, hs)
            mask = document_mask(position_ids)
        for block in self.layers:
            if self.checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, cos, sin, mask, use_reentrant=False)  # recomputed in backward: memory for time
            else:
                x = block(x, cos, sin, mask)
        return F.rms_norm(x, (x.shape[-1],), self.norm, self.config.rms_norm_eps)

    # -- Hugging Face weights ---------------------------------------------------------------------
    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        cfg, sd = self.config, {}
        sd["model.embed_tokens.weight"] = self.embed.weight
        for i, b in enumerate(self.layers):
            p = f"model.layers.{i}."
            q, k, v = b.qkv.weight.split([b.n_head * b.head_dim, b.n_kv * b.head_dim, b.n_kv * b.head_dim])
            sd |= {p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
                   p + "self_attn.o_proj.weight": b.o.weight, p + "input_layernorm.weight": b.attn_norm,
                   p + "post_attention_layernorm.weight": b.mlp_norm}
            if b.qkv.bias is not None:
                qb, kb, vb = b.qkv.bias.split([b.n_head * b.head_dim, b.n_kv * b.head_dim, b.n_kv * b.head_dim])
                sd |= {p + "self_attn.q_proj.bias": qb, p + "self_attn.k_proj.bias": kb, p + "self_attn.v_proj.bias": vb}
            if b.o.bias is not None:
                sd[p + "self_attn.o_proj.bias"] = b.o.bias
            if b.q_norm is not None:
                sd |= {p + "self_attn.q_norm.weight": b.q_norm, p + "self_attn.k_norm.weight": b.k_norm}
            gate, up = b.gate_up.weight.chunk(2)
            sd |= {p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up, p + "mlp.down_proj.weight": b.down.weight}
            if b.gate_up.bias is not None:
                gb, ub = b.gate_up.bias.chunk(2)
                sd |= {p + "mlp.gate_proj.bias": gb, p + "mlp.up_proj.bias": ub, p + "mlp.down_proj.bias": b.down.bias}
        sd["model.norm.weight"] = self.norm
        if not cfg.tie_word_embeddings:
            sd["lm_head.weight"] = self.lm_head.weight
        return {k: v.detach().clone().contiguous() for k, v in sd.items()}

    @classmethod
    def from_hf(cls, config, tensor: Callable[[str, torch.dtype], torch.Tensor], dtype: torch.dtype = torch.float32) -> Llama:
        """The inverse of `hf_state_dict`: a Llama whose weights are read one HF tensor at a time (`tensor(name, dtype)`
        gives the weight of that HF name in that dtype) and fused as this module keeps them.

        Linear and embedding weights take `dtype` (bf16 halves a frozen base); norm weights stay fp32, as HF keeps them
        under autocast. Built on the meta device: no random initialisation is paid for weights about to be replaced."""
        with torch.device("meta"):
            model = cls(config)

        def get(name: str, as_dtype: torch.dtype = dtype) -> torch.Tensor:
            return tensor(name, as_dtype)

        weights = {"embed.weight": get("model.embed_tokens.weight"), "norm": get("model.norm.weight", torch.float32)}
        weights["lm_head.weight"] = weights["embed.weight"] if config.tie_word_embeddings else get("lm_head.weight")
        for i, b in enumerate(model.layers):
            hf, ours = f"model.layers.{i}.", f"layers.{i}."
            attn, mlp = hf + "self_attn.", hf + "mlp."
            weights |= {ours + "attn_norm": get(hf + "input_layernorm.weight", torch.float32),
                        ours + "mlp_norm": get(hf + "post_attention_layernorm.weight", torch.float32),
                        ours + "qkv.weight": torch.cat([get(attn + p + "_proj.weight") for p in "qkv"]),
                        ours + "o.weight": get(attn + "o_proj.weight"),
                        ours + "gate_up.weight": torch.cat([get(mlp + "gate_proj.weight"), get(mlp + "up_proj.weight")]),
                        ours + "down.weight": get(mlp + "down_proj.weight")}
            if b.qkv.bias is not None:
                weights[ours + "qkv.bias"] = torch.cat([get(attn + p + "_proj.bias") for p in "qkv"])
            if b.o.bias is not None:
                weights[ours + "o.bias"] = get(attn + "o_proj.bias")
            if b.q_norm is not None:
                weights[ours + "q_norm"] = get(attn + "q_norm.weight", torch.float32)
                weights[ours + "k_norm"] = get(attn + "k_norm.weight", torch.float32)
            if b.gate_up.bias is not None:
                weights[ours + "gate_up.bias"] = torch.cat([get(mlp + "gate_proj.bias"), get(mlp + "up_proj.bias")])
                weights[ours + "down.bias"] = get(mlp + "down_proj.bias")
        model.load_state_dict(weights, strict=True, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.embed.weight
        model.cos, model.sin = model._rope_tables()
        return model

    def to_hf(self) -> LlamaForCausalLM:
        """The HF module of the architecture the config names (Llama, Mistral, Qwen2, Qwen3) with these weights."""
        from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig

        config = self.config if isinstance(self.config, PretrainedConfig) else LlamaConfig(**vars(self.config))
        hf = AutoModelForCausalLM.from_config(config)
        missing, unexpected = hf.load_state_dict(self.hf_state_dict(), strict=False)
        missing = [m for m in missing if not (self.config.tie_word_embeddings and m == "lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"weights do not map onto {type(hf).__name__}: missing {missing}, unexpected {unexpected}")
        if self.config.tie_word_embeddings:
            hf.tie_weights()
        return hf.eval()


def from_hf_folder(path: Path, dtype: torch.dtype = torch.float32) -> Llama:
    """A Hugging Face Llama folder (safetensors, one file or sharded) as our Llama, read tensor by tensor."""
    import json

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    index = path / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"] if index.exists() else None
    readers: dict[str, SafetensorsReader] = {}

    def tensor(name: str, as_dtype: torch.dtype) -> torch.Tensor:
        file = weight_map[name] if weight_map else "model.safetensors"
        if file not in readers:
            readers[file] = SafetensorsReader(path / file)
        return readers[file].get(name, as_dtype)

    try:
        return Llama.from_hf(config, tensor, dtype)
    finally:
        for reader in readers.values():
            reader.close()
        _release_free_memory()


def _release_free_memory() -> None:
    # Loading frees many fp32-sized temporaries; glibc keeps freed heap pages resident until trimmed.
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


class SafetensorsReader:
    """Tensors of a safetensors file by plain reads, converted to a dtype slice by slice on the way in.

    Why not safetensors' safe_open: it maps the file, and every page a read touches counts in the
    process's resident memory while the file is open, so loading a 540 MB fp32 base into bf16 would
    peak at the fp32 size plus the bf16 one. Here the fp32 values pass through one small buffer.
    (The format is a JSON header and raw little-endian arrays: nothing in it is executable.)"""

    DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    SLICE = 1 << 22  # bytes read at a time

    def __init__(self, path: Path):
        import json
        import struct

        self.file = open(path, "rb")  # noqa: SIM115 (closed by close())
        (size,) = struct.unpack("<Q", self.file.read(8))
        self.header = {k: v for k, v in json.loads(self.file.read(size)).items() if k != "__metadata__"}
        self.start = 8 + size
        self.buffer = torch.empty(self.SLICE, dtype=torch.uint8)

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        info = self.header[name]
        if info["dtype"] not in self.DTYPES:
            raise ValueError(f"{self.file.name}: tensor {name} is {info['dtype']}; expected one of {', '.join(self.DTYPES)}")
        source = self.DTYPES[info["dtype"]]
        out = torch.empty(info["shape"], dtype=dtype or source)
        flat, step = out.view(-1), self.SLICE // source.itemsize
        buffer = self.buffer.view(source)  # one buffer for every tensor: no allocator churn
        self.file.seek(self.start + info["data_offsets"][0])
        for begin in range(0, flat.numel(), step):
            piece = buffer[: min(step, flat.numel() - begin)]
            view = memoryview(piece.view(torch.uint8).numpy())
            if self.file.readinto(view) != len(view):
                raise ValueError(f"{self.file.name}: tensor {name} is cut short (the file is truncated)")
            flat[begin: begin + piece.numel()] = piece
        return out

    def close(self) -> None:
        self.file.close()
