"""Loading the models a server serves: which kind each is, which backend runs it."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmkit.config import ServeConfig
from llmkit.errors import UserError
from llmkit.models.io import Model, resolve_model
from llmkit.models.kind import model_kind
from llmkit.runtime.backends import choose_backend, load_backend
from llmkit.runtime.batch import llama_cpp_decoder, single_decoder, torch_decoder
from llmkit.runtime.prefix_cache import PrefixCache
from llmkit.runtime.threads import cpu_cores
from llmkit.serve.engine import Engine
from llmkit.serve.errors import ApiError


@dataclass
class ServedModel:
    id: str  # what clients send as `model`
    kind: str  # "causal" | "classifier" | "encoder"
    backend: str
    model: Model
    tokenizer: Any
    created: int = field(default_factory=lambda: int(time.time()))
    engine: Engine | None = None  # causal models
    eos: set[int] = field(default_factory=set)
    net: Any = None  # classifier / encoder module
    labels: list[str] | None = None
    max_length: int = 512
    lock: threading.Lock = field(default_factory=threading.Lock)  # one forward at a time per module
    parent: str | None = None  # an adapter served on a base: the base's id (it shares the base's engine)
    adapter_id: int = 0  # that adapter's id on the base's decoder (0: not an adapter)
    adapters: dict = field(default_factory=dict)  # a base: its adapters' layouts by id (serve.adapters)

    @property
    def max_len(self) -> int | None:
        return self.engine.max_len if self.engine else self.max_length


def decode_workers(cfg: ServeConfig, backend: str) -> int:
    """Decode workers of a causal model: --workers, else 2 for torch on 2+ cores, else 1."""
    return cfg.workers or (2 if backend == "torch" and cpu_cores() >= 2 else 1)


def served_name(ref: str, registry, model: Model | None = None) -> str:
    """The id a `serve` argument answers as: NAME of NAME=MODEL, else the alias it was asked by (`serve prod` answers as
    prod, wherever it points), else the model's name."""
    name, _, target = ref.rpartition("=")
    if name:
        return name
    model = model or resolve_model(target, registry)
    return model.alias or model.name


def load_served(ref: str, cfg: ServeConfig, registry, on_step=None) -> ServedModel:
    from llmkit.models.io import load_causal_lm, load_classifier, load_tokenizer_for, quiet_transformers

    quiet_transformers()
    model = resolve_model(ref.rpartition("=")[2], registry)  # NAME=MODEL serves MODEL under another name
    served_id = served_name(ref, registry, model)
    kind = model_kind(model)
    backend = choose_backend(model, cfg.backend) if kind == "causal" else "torch"
    if kind != "causal" and cfg.backend not in ("auto", "torch"):
        raise UserError(f"{model.ref} is a {kind}; only the torch backend serves those (drop --backend {cfg.backend})")
    if kind == "classifier":
        clf, tok, labels = load_classifier(model)
        return ServedModel(served_id, kind, backend, model, tok, net=clf, labels=labels,
                           max_length=(model.lineage or {}).get("max_length") or _context(clf.config))
    if kind == "encoder":
        enc, tok = _load_encoder(model)
        return ServedModel(served_id, kind, backend, model, tok, net=enc, max_length=_encoder_context(model, enc.config))
    if backend == "torch":
        lm, tok = load_causal_lm(model)
        # Workers share the weights (read-only) and each decodes its own batch from its own KV pool, in
        # parallel: torch ops release the GIL. Two small batches on two cores beat one big one on one.
        workers = decode_workers(cfg, backend)
        # One prefix cache per model, shared by its workers: a prefix one computed, the other reuses.
        cache = PrefixCache(cfg.prefix_cache_mb * 2**20) if cfg.prefix_cache_mb else None
        decoders = [torch_decoder(lm, cfg.max_batch, cache, cfg.max_context) for _ in range(workers)]
        eos = {lm.config.eos_token_id} if isinstance(lm.config.eos_token_id, int) else set(lm.config.eos_token_id or [])
    elif backend == "llama.cpp":
        # One context holds the whole running batch (a sequence id per request): one decode per step.
        tok = load_tokenizer_for(model)
        decoders = [llama_cpp_decoder(model, cfg.max_batch, cfg.max_context) for _ in range(decode_workers(cfg, backend))]
        config = json.loads((model.path / "config.json").read_text())
        eos = {config["eos_token_id"]} if isinstance(config.get("eos_token_id"), int) else set(config.get("eos_token_id") or [])
    else:
        tok = load_tokenizer_for(model)
        decoders = [single_decoder(load_backend(backend, model)) for _ in range(decode_workers(cfg, backend))]
        config = json.loads((model.path / "config.json").read_text())
        eos = {config["eos_token_id"]} if isinstance(config.get("eos_token_id"), int) else set(config.get("eos_token_id") or [])
    if tok.eos_token_id is not None:
        eos.add(tok.eos_token_id)
    engine = Engine(served_id, decoders, max_queue=cfg.max_queue, on_step=on_step)
    # The HF module stays reachable for /v1/explain (torch only; the engine decodes with its own copy).
    return ServedModel(served_id, kind, backend, model, tok, engine=engine, eos=eos,
                       net=lm if backend == "torch" else None)


def _context(config) -> int:
    n = getattr(config, "max_position_embeddings", None) or 512
    return min(int(n), 8192)


def _encoder_context(model: Model, config) -> int:
    """A sentence-transformers model's own input limit (`max_seq_length`, 256 for all-MiniLM-L6-v2, as vLLM takes it),
    else its position table's: sentence-transformers cuts a text there, so a longer one served whole gave a vector
    that model never gives (a 300-token chunk's did not match the index it built)."""
    try:
        limit = json.loads((Path(model.path) / "sentence_bert_config.json").read_text()).get("max_seq_length")
    except (OSError, ValueError, AttributeError):
        limit = None
    return min(limit, _context(config)) if isinstance(limit, int) and limit > 0 else _context(config)


def _load_encoder(model: Model):
    from transformers import AutoModel

    from llmkit.models.io import check_safetensors, load_tokenizer_for

    if not Path(model.path).is_dir():
        raise UserError(f"{model.ref}: embeddings need a local model folder")
    check_safetensors(model)
    try:
        net = AutoModel.from_pretrained(str(model.path), use_safetensors=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load {model.path} as an encoder: {str(err).splitlines()[0]}") from None
    return net.eval(), load_tokenizer_for(model)


@torch.inference_mode()
def embed(served: ServedModel, texts: list[str]) -> tuple[list[list[float]], int]:
    """Mean-pooled, L2-normalised last hidden states (sentence-transformers' recipe for MiniLM); (vectors, tokens)."""
    net = served.net.base_model if served.kind == "classifier" else served.net
    with served.lock:  # the tokenizer too: its padding settings are shared state (see routes.llmkit_api.classify)
        # Not truncated: a search index fed vectors of only the first 512 tokens of its chunks would not know it.
        enc = served.tokenizer(texts, padding=True, return_tensors="pt")
        lengths = enc["attention_mask"].sum(1).tolist()
        over = next((i for i, n in enumerate(lengths) if n > served.max_length), None)
        if over is not None:
            where = f"input[{over}]" if len(texts) > 1 else "input"
            raise ApiError(400, f"{where} is {lengths[over]:,} tokens and {served.id}'s context is {served.max_length}; "
                                "split it into shorter pieces", param=where, code="context_length_exceeded")
        hidden = net(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state  # (B, T, C)
    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, C)
    pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
    return pooled.tolist(), int(enc["attention_mask"].sum())


def explainable(served: ServedModel) -> bool:
    return not why_not_explainable(served)


def why_not_explainable(served: ServedModel) -> str:
    """'' when /v1/explain takes the model, else why not and what to do instead."""
    if served.parent is not None:
        return (f"it is a LoRA adapter decoded in the batches of '{served.parent}', with no module of its own to take "
                f"gradients through; merge it (llmkit merge {served.model.name}) and explain or serve the merged model")
    if served.kind == "encoder":
        return "it is an encoder (embeddings only), with no label or next token to explain; explain a classifier or a causal LM"
    if served.net is None:
        return (f"it runs on {served.backend}, which gives no gradients here; explain the model it was exported from "
                "(served with --backend torch)")
    return ""
