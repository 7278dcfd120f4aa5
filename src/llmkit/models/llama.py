"""The Llama model we train: nanoGPT-sized code, Hugging Face-compatible weights.

Training runs this module rather than `transformers.LlamaForCausalLM` because at llmkit's sizes the
HF module's per-call machinery (mask and cache plumbing, output objects, hooks) costs as much as
the arithmetic, and separate q/k/v and gate/up matmuls are slower than fused ones. The maths is
HF's Llama exactly (RMSNorm, RoPE with rotate-half, SwiGLU, GQA), so `to_hf()` hands the weights to
a `LlamaForCausalLM` that gives the same logits and saves as a normal HF folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:  # the HF modeling module takes seconds to import; only to_hf() needs it
    from transformers import LlamaConfig, LlamaForCausalLM


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        c, self.n_head, self.n_kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or c // self.n_head
        self.eps, self.dropout = cfg.rms_norm_eps, cfg.attention_dropout
        self.attn_norm = nn.Parameter(torch.ones(c))
        self.qkv = nn.Linear(c, (self.n_head + 2 * self.n_kv) * self.head_dim, bias=cfg.attention_bias)
        self.o = nn.Linear(self.n_head * self.head_dim, c, bias=cfg.attention_bias)
        self.mlp_norm = nn.Parameter(torch.ones(c))
        self.gate_up = nn.Linear(c, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.intermediate_size, c, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        h = F.rms_norm(x, (C,), self.attn_norm, self.eps)
        q, k, v = self.qkv(h).split([self.n_head * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=self.n_kv != self.n_head)  # (B, nh, T, hs)
        x = x + self.o(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        h = F.rms_norm(x, (C,), self.mlp_norm, self.eps)
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        head_dim = self.layers[0].head_dim
        theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        freqs = torch.outer(torch.arange(cfg.max_position_embeddings).float(), inv_freq)  # (T_max, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T_max, hs)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        B, T = input_ids.shape
        if T > self.cos.shape[0]:
            raise ValueError(f"sequence of {T} tokens is longer than the context {self.cos.shape[0]}")
        x = self.embed(input_ids)  # (B, T, C)
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        for block in self.layers:
            x = block(x, cos, sin)
        x = F.rms_norm(x, (x.shape[-1],), self.norm, self.config.rms_norm_eps)
        return self.lm_head(x)  # (B, T, V)

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
                sd |= {p + "self_attn.q_proj.bias": qb, p + "self_attn.k_proj.bias": kb, p + "self_attn.v_proj.bias": vb,
                       p + "self_attn.o_proj.bias": b.o.bias}
            gate, up = b.gate_up.weight.chunk(2)
            sd |= {p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up, p + "mlp.down_proj.weight": b.down.weight}
            if b.gate_up.bias is not None:
                gb, ub = b.gate_up.bias.chunk(2)
                sd |= {p + "mlp.gate_proj.bias": gb, p + "mlp.up_proj.bias": ub, p + "mlp.down_proj.bias": b.down.bias}
        sd["model.norm.weight"] = self.norm
        if not cfg.tie_word_embeddings:
            sd["lm_head.weight"] = self.lm_head.weight
        return {k: v.detach().clone().contiguous() for k, v in sd.items()}

    def to_hf(self) -> LlamaForCausalLM:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = self.config if isinstance(self.config, LlamaConfig) else LlamaConfig(**vars(self.config))
        hf = LlamaForCausalLM(config)
        missing, unexpected = hf.load_state_dict(self.hf_state_dict(), strict=False)
        missing = [m for m in missing if not (self.config.tie_word_embeddings and m == "lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"weights do not map onto LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
        if self.config.tie_word_embeddings:
            hf.tie_weights()
        return hf.eval()
