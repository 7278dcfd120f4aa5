"""`llmkit export`: a model as GGUF (llama.cpp, Ollama), registered with its source as parent.

Prints the before/after table every compression command shares (see `table.py`).
"""

from __future__ import annotations

from llmkit.config import ExportConfig
from llmkit.errors import UserError
from llmkit.models.io import Model, resolve_model
from llmkit.models.naming import output_name
from llmkit.optimize.made_before import made_before_model, recipe_key
from llmkit.optimize.table import check_eval_data, table_if_asked
from llmkit.registry import Registry
from llmkit.workspace import Workspace


def export(model_ref: str, cfg: ExportConfig, ws: Workspace | None = None, registry: Registry | None = None,
           console=None, progress=None) -> tuple[Model, list[dict] | None]:
    cfg = ExportConfig.given(cfg, "llmkit.optimize.export.export")
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    source = resolve_model(model_ref, registry)
    quantized = (source.lineage or {}).get("quantization")
    if quantized:  # its layers are llmkit's quantized modules: neither writer knows them (KeyError, exit 1)
        origin = ((source.lineage or {}).get("parent_model") or {}).get("ref") or "the model it was made from"
        how = f" with --quant {cfg.quant}" if cfg.format == "gguf" else ""
        raise UserError(f"{source.ref} is quantized ({quantized['method']}); export the model it came from ({origin})"
                        f"{how}: the export quantizes itself")
    check_eval_data(source, cfg.eval_data if cfg.table else None, registry, "export")
    fmt_kind = "onnx" if cfg.format == "onnx" else "gguf"
    existing = registry.find(cfg.name, "model") if cfg.name else None
    if existing is not None and existing.kind != fmt_kind:  # X:v2 a GGUF under X:v1's name: `generate X` then failed
        raise UserError(f"export.name = '{cfg.name}' is the name of {existing.ref} (a {existing.kind} model): the export "
                        f"would become its next version and the name would mean the {cfg.format.upper()} file; choose "
                        "another --name")
    if cfg.format == "onnx":
        return _export_onnx(source, cfg, ws, registry, console, progress)
    from llmkit.optimize.export_gguf import export_gguf_folder

    name = output_name("export", cfg.name, f"{source.name.split('/')[-1]}-{cfg.quant}")
    recipe = recipe_key("export-gguf", source, cfg)
    if (exported := made_before_model(registry, name, recipe, source, "export", console)) is not None:
        return exported, table_if_asked(source, exported, cfg, ws, registry, console, progress)
    target = ws.new_folder("models", name, "gguf")
    lineage = {"task": "causal-lm", "method": f"export-gguf-{cfg.quant}",
               "parent_model": {"id": source.id, "ref": source.ref, "path": str(source.path)},
               "dataset": (source.lineage or {}).get("dataset"), "config": cfg.model_dump()}
    info = export_gguf_folder(source, target, cfg.quant, lineage)
    rec = registry.add("model", name, kind="gguf", path=target, params={"format": "gguf", "quant": cfg.quant}, content_hash=recipe,
                       metrics={"tensor_types": info["tensor_types"]}, parents=[(source.id, "exported_from")] if source.id else [])
    exported = Model(target, name, rec.id, rec.version, {**lineage, "format": "gguf", "gguf": target.name})
    exported.lineage = resolve_model(rec.id, registry).lineage
    if console is not None:
        kinds = ", ".join(f"{n} {kind}" for kind, n in info["tensor_types"].items())  # e.g. 29 q8_0, 9 f32 (the norms)
        console.print(f"GGUF {cfg.quant}: {info['gguf']} ({kinds} tensors); Ollama: cd {target} && ollama create {name} -f Modelfile",
                      markup=False, highlight=False)
        if info["context_length"] < info["trained_context"]:  # the sliding window: said, not left to a llama.cpp log
            console.print(f"context: {info['context_length']} tokens, {source.ref}'s sliding window (of "
                          f"{info['trained_context']}): llama.cpp attends to the whole context, so within the window it "
                          "computes what transformers does, and the GGUF and Modelfile say this context", markup=False,
                          highlight=False)
    return exported, table_if_asked(source, exported, cfg, ws, registry, console, progress)


def _export_onnx(source: Model, cfg: ExportConfig, ws: Workspace, registry: Registry, console, progress):
    import json

    from llmkit.eval.evaluation import model_task
    from llmkit.optimize.export_onnx import write_onnx
    from llmkit.workspace import atomic_dir

    # the GGUF default (q8_0) is not ONNX's: an ONNX export is fp32 unless --quant is given
    quant = cfg.quant if "quant" in cfg.model_fields_set else "f32"
    if quant not in ("f32", "q8_0"):  # it was ignored: --quant q4_0 wrote fp32 without a word
        raise UserError(f"export.quant = '{quant}': an ONNX export is f32 or q8_0 (onnxruntime's dynamic int8); "
                        f"{quant} is a GGUF type (--format gguf)")
    from llmkit.models.files import check_weights
    from llmkit.models.kind import model_kind

    # before the "about 90 s" line: an export of an export, or an encoder, was refused only after it
    check_weights(source.path, "ONNX export")
    if model_kind(source) not in ("causal", "classifier"):
        raise UserError(f"{source.ref} is an encoder (no language-model or classifier head): ONNX export takes causal LMs "
                        "and classifiers; fine-tune it into one first (llmkit train classify --base "
                        f"{source.name} --data NAME)")
    name = output_name("export", cfg.name, f"{source.name.split('/')[-1]}-onnx" + ("-int8" if quant == "q8_0" else ""))
    # the quant written, not the one given: cfg.quant is GGUF's q8_0 by default where ONNX writes f32
    recipe = recipe_key("export-onnx", source, cfg, quant=quant)
    if (exported := made_before_model(registry, name, recipe, source, "export", console)) is not None:
        return exported, table_if_asked(source, exported, cfg, ws, registry, console, progress)
    kind = model_task(source)
    target = ws.new_folder("models", name, "onnx")
    lineage = {**(source.lineage or {}), "task": kind, "method": "export-onnx", "format": "onnx",
               "parent_model": {"id": source.id, "ref": source.ref, "path": str(source.path)}, "config": cfg.model_dump()}
    if console is not None:  # the exporter says nothing for minutes on a real model
        console.print(f"exporting {source.ref} to ONNX (torch.onnx, then a parity check on onnxruntime"
                      + (", then int8" if quant == "q8_0" else "") + "): about 90 s for a 135M model on 2 cores",
                      markup=False, highlight=False)
    with atomic_dir(target) as tmp:
        info = write_onnx(source, tmp, classifier=kind == "classification", int8=quant == "q8_0")
        lineage.update(info)
        (tmp / "llmkit.json").write_text(json.dumps(lineage, indent=2, default=str))
    rec = registry.add("model", name, kind="onnx", path=target, params={"format": "onnx", "task": kind}, content_hash=recipe,
                       metrics={"max_abs_logit_diff": info["max_abs_logit_diff"]},
                       parents=[(source.id, "exported_from")] if source.id else [])
    exported = Model(target, name, rec.id, rec.version, lineage)
    if console is not None:
        console.print(f"ONNX (opset {info['opset']}): {target / 'model.onnx'}; onnxruntime vs PyTorch at batch 1 and 2: "
                      f"max |logit difference| {info['max_abs_logit_diff']:.2e}"
                      + (f" before int8, {info['int8_max_abs_logit_diff']:.2e} after (weights int8, activations rounded "
                         "per batch: onnxruntime's dynamic quantization)" if quant == "q8_0" else ""),
                      markup=False, highlight=False)
    # perplexity or accuracy from onnxruntime's logits (`runtime.onnx.OnnxLM`, `OnnxClassifier`)
    return exported, table_if_asked(source, exported, cfg, ws, registry, console, progress)
