"""Whether a serving configuration fits the machine, said before anything loads.

Per model: its weights (file sizes; torch's fast decoder keeps a second copy in its own layout), the KV cache
of a full batch at full context for every worker (what the server may need at its busiest: each row can grow to
the context), and the prefix cache's budget; LoRA adapters their files. Against the memory the system says is
available (MemAvailable, and a cgroup's limit when one is set). A configuration that cannot fit is refused with
one line naming what would: a smaller --max-batch, a --max-context, fewer workers, no prefix cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmkit.config import ServeConfig
from llmkit.errors import UserError

GiB = 2**30
MiB = 2**20


@dataclass
class Need:
    model: str
    weights: int = 0  # bytes
    kv: int = 0  # bytes, a full batch at full context, all workers
    prefix: int = 0  # bytes, the prefix cache's budget
    kv_per_sequence: int = 0  # bytes of one full-context row
    rows: int = 0  # rows the KV figure counts (workers x max_batch)
    context: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.prefix


def _files(path: Path, suffixes: tuple[str, ...]) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)


def _kv_per_token(config: dict, bytes_per: int) -> int:
    heads = config.get("num_attention_heads") or 0
    kv_heads = config.get("num_key_value_heads") or heads
    hd = config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else 0)
    return int(config.get("num_hidden_layers") or 0) * 2 * kv_heads * hd * bytes_per


def need(model, backend: str, kind: str, cfg: ServeConfig, workers: int) -> Need:
    """What serving `model` (a models.io.Model) on `backend` takes at most."""
    path = Path(model.path)
    out = Need(model.ref)
    config_file = path / "config.json" if path.is_dir() else None
    config = json.loads(config_file.read_text()) if config_file and config_file.exists() else {}
    if backend == "llama.cpp":
        from llmkit.runtime.llama_cpp import gguf_file

        out.weights = gguf_file(model).stat().st_size
        per_token = _kv_per_token(config, 2)  # f16 K/V
    else:
        out.weights = _files(path, (".safetensors", ".onnx", ".bin"))
        if kind == "causal" and backend == "torch":
            out.weights *= 2  # the fast decoder's copy in its own layout
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
        per_token = _kv_per_token(config, 2 if "16" in dtype else 4) if backend == "torch" else 0
    if kind != "causal":
        return out
    out.context = min(config.get("max_position_embeddings") or 2048, cfg.max_context or 10**9)
    out.rows = workers * (cfg.max_batch if backend in ("torch", "llama.cpp") else 1)
    out.kv_per_sequence = per_token * out.context
    out.kv = out.kv_per_sequence * out.rows
    if backend == "torch":
        out.prefix = cfg.prefix_cache_mb * MiB
    return out


def available() -> int:
    """Bytes the system can still give this process: MemAvailable, or less under a cgroup limit."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free or 2**62, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free if free is not None else 2**62


def describe(needs: list[Need], free: int) -> str:
    total = sum(n.total for n in needs)
    # no KV cache said for an encoder or a classifier ("KV cache up to 0 MiB (0 rows x 0 tokens)"), nor for ONNX
    parts = [f"{n.model}: weights {n.weights / MiB:,.0f} MiB"
             + (f", KV cache up to {n.kv / MiB:,.0f} MiB ({n.rows} rows x {n.context} tokens)" if n.kv else "")
             + (f", prefix cache {n.prefix / MiB:,.0f} MiB" if n.prefix else "") for n in needs]
    # a small model's total in MiB: "up to 0.0 GiB" for 4 MiB
    whole = f"{total / GiB:.1f} GiB" if total >= GiB / 10 else f"{total / MiB:,.0f} MiB"
    return f"memory: {'; '.join(parts)}; in all up to {whole} of {free / GiB:.1f} GiB available"


def check(needs: list[Need], cfg: ServeConfig, free: int | None = None) -> str:
    """The memory line to print at start; UserError (one line, what would fit) when it cannot fit."""
    free = available() if free is None else free
    total = sum(n.total for n in needs)
    if total <= free:
        return describe(needs, free)
    fixed = sum(n.weights for n in needs)
    if fixed > free:
        raise UserError(f"the models' weights alone take {fixed / GiB:.1f} GiB and {free / GiB:.1f} GiB is available; "
                        "serve fewer or smaller models (a quantized export: llmkit quantize / export --format gguf)")
    room = free - fixed - sum(n.prefix for n in needs)
    kv = sum(n.kv for n in needs)
    advice = []
    rows_per_unit = sum(n.kv_per_sequence * n.rows for n in needs) / max(1, cfg.max_batch)
    if room > 0 and rows_per_unit:
        batch = int(room // rows_per_unit)
        if batch >= 1:
            advice.append(f"--max-batch {batch}")
        longest = max(n.context for n in needs)
        scale = room / kv if kv else 1
        if scale > 0 and int(longest * scale) >= 256:
            advice.append(f"--max-context {int(longest * scale) // 256 * 256}")
    if any(n.prefix for n in needs):
        advice.append("--prefix-cache-mb 0")
    what = " or ".join(advice) if advice else "fewer models"
    raise UserError(f"this configuration needs up to {total / GiB:.1f} GiB (weights {fixed / GiB:.1f}, KV cache "
                    f"{kv / GiB:.1f} for {cfg.max_batch} rows per worker at full context, prefix cache "
                    f"{sum(n.prefix for n in needs) / GiB:.1f}) and {free / GiB:.1f} GiB is available; try {what}")


def needs_of(cfg: ServeConfig, registry) -> list[Need]:
    """The needs of every model and adapter `cfg` serves, from their files and configs (nothing loaded)."""
    from llmkit.models.io import adapter_base, is_adapter, resolve_model

    # Every name resolved before torch is imported (by the backends below): a mistyped one is answered at once.
    specs = [*cfg.models, *cfg.adapters]
    models = [resolve_model(spec.rpartition("=")[2], registry) for spec in specs]
    from llmkit.models.kind import model_kind
    from llmkit.runtime.backends import choose_backend
    from llmkit.serve.served import decode_workers

    def of(model) -> Need:
        kind = model_kind(model)
        backend = choose_backend(model, cfg.backend) if kind == "causal" else "torch"
        return need(model, backend, kind, cfg, decode_workers(cfg, backend) if kind == "causal" else 1)

    served = {Path(m.path).resolve() for m in models}
    out = []
    for spec, model in zip(specs, models, strict=True):
        if is_adapter(model.path):
            adapter = _files(Path(model.path), (".safetensors",))
            base = adapter_base(model)
            if Path(base.path).resolve() in served:  # on a base served beside it: its own weights only
                out.append(Need(model.ref, weights=adapter))
            else:  # served alone, its base is loaded with it ("weights 9 MiB" left out the base's 1 GiB)
                alone = of(base)
                alone.model, alone.weights = model.ref, alone.weights + adapter
                out.append(alone)
        else:
            out.append(of(model))
        served_as = spec.rpartition("=")[0]
        if served_as:  # `serve a=shk-nano b=shk-nano`: each line named as it is served (both said shk-nano:v1)
            out[-1].model = f"{served_as} ({model.ref})"
    return out
