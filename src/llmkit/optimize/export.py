"""`llmkit export`: a model as GGUF (llama.cpp, Ollama), registered with its source as parent.

Prints the before/after table every compression command shares (see `table.py`).
"""

from __future__ import annotations

from llmkit.config import ExportConfig
from llmkit.errors import UserError
from llmkit.models.io import Model, resolve_model
from llmkit.registry import Registry
from llmkit.workspace import Workspace


def export(model_ref: str, cfg: ExportConfig, ws: Workspace | None = None, registry: Registry | None = None,
           console=None, progress=None) -> tuple[Model, list[dict] | None]:
    ws = ws or Workspace.open()
    registry = registry or Registry.for_workspace(ws.root)
    source = resolve_model(model_ref, registry)
    if cfg.format == "onnx":
        raise UserError("export --format onnx is not available yet in this version; --format gguf is")
    from llmkit.optimize.export_gguf import export_gguf_folder

    name = cfg.name or f"{source.name.split('/')[-1]}-{cfg.quant}"
    target = ws.folder("models", f"{name}-{(source.id or 'local')}-gguf")
    lineage = {"task": "causal-lm", "method": f"export-gguf-{cfg.quant}",
               "parent_model": {"id": source.id, "ref": source.ref, "path": str(source.path)},
               "dataset": (source.lineage or {}).get("dataset"), "config": cfg.model_dump()}
    info = export_gguf_folder(source, target, cfg.quant, lineage)
    rec = registry.add("model", name, kind="gguf", path=target, params={"format": "gguf", "quant": cfg.quant},
                       metrics={"tensor_types": info["tensor_types"]}, parents=[(source.id, "exported_from")] if source.id else [])
    exported = Model(target, name, rec.id, rec.version, {**lineage, "format": "gguf", "gguf": target.name})
    exported.lineage = resolve_model(rec.id, registry).lineage
    if console is not None:
        console.print(f"GGUF {cfg.quant}: {info['gguf']} ({info['tensor_types']}); Ollama: cd {target} && ollama create {name} -f Modelfile")
    rows = None
    if cfg.table:
        from llmkit.optimize.table import before_after

        rows = before_after(source, exported, ws, registry, cfg.eval_max_examples, console, progress)
    return exported, rows
