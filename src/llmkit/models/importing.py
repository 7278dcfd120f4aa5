"""`llmkit import SOURCE`: a pretrained model registered in the workspace, with where it came from.

The files are read by `models.pretrained` and checked by `models.folder_checks` (refusals come before anything
is written), then copied or dequantized into the workspace's own folder, so the registered model does not change when the
source does. Importing the same weights under the same name again returns the version already there.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.errors import UserError
from llmkit.models.files import PICKLE_SUFFIXES
from llmkit.models.folder_checks import check_folder
from llmkit.models.io import BUILTIN_MODELS, Model
from llmkit.models.pretrained import describe, find_source, materialize, sha256_of, weight_files
from llmkit.registry import Registry, given_or_default
from llmkit.workspace import Workspace


def import_model(source: str, name: str | None = None, ws: Workspace | None = None, registry: Registry | None = None,
                 console=None) -> tuple[Model, bool]:
    """(the registered model, True when the same weights were already registered under this name)."""
    ws = Workspace.open(ws)
    registry = registry or Registry.for_workspace(ws.root)
    src = find_source(source)
    given = name
    name = given_or_default(name, (src.path.name if src.path.is_dir() else src.path.stem).lower())
    if name in BUILTIN_MODELS:  # registered, it was shadowed: `show NAME` read the import, `chat NAME` the built-in
        how = "choose another --name" if given else f"it is the name of the folder or file; pass --name, e.g. --name my-{name}"
        raise UserError(f"model name '{name}' is a built-in model's (every command reads '{name}' as the built-in); {how}",
                        param="name")
    if src.path.is_dir():
        check_folder(src.path)
    if console is not None:
        console.print(f"reading {src.path} ({src.kind})")
    sha = sha256_of(weight_files(src))
    latest = registry.find(name, "model")
    if latest is not None and latest.content_hash == sha and latest.path and _same_files(src, Path(latest.path)):
        path = Path(latest.path)
        lineage = json.loads((path / "llmkit.json").read_text()) if (path / "llmkit.json").exists() else None
        return Model(path, latest.name, latest.id, latest.version, lineage), True
    target = ws.new_folder("models", name)
    if console is not None and src.path.is_file():
        console.print("dequantizing the GGUF into safetensors (about 20 seconds for a 135M model)")
    config = materialize(src, target)
    facts = describe(config, target)
    lineage = {"format": "llmkit.model/1", "task": "causal-lm", "parent_model": None,
               "imported": {"source": str(src.label), "path": str(src.path), "kind": src.kind, "sha256": sha},
               "architecture": facts["architecture"], "parameters": facts["parameters"],
               "context_length": facts["context_length"]}
    (target / "llmkit.json").write_text(json.dumps(lineage, indent=2))
    params = {"source": str(src.label), "kind": src.kind, "sha256": sha, "architecture": facts["architecture"],
              "parameters": facts["parameters"], "context_length": facts["context_length"],
              "chat_template": facts["chat_template"]}
    rec = registry.add("model", name, kind="causal-lm", path=target, content_hash=sha, params=params)
    return Model(target, name, rec.id, rec.version, lineage), False



def _same_files(src, copy: Path) -> bool:
    """Whether the registered copy holds the source folder's other files (config, tokenizer, template) too: the
    same weights beside a tokenizer added since, or a mended config, make a new version (the broken copy came back)."""
    if src.path.is_file():  # a GGUF: its weights are all there is
        return True
    for item in src.path.iterdir():
        if item.is_file() and item.suffix not in PICKLE_SUFFIXES and not item.name.startswith(".") \
                and item.suffix != ".safetensors" and item.name != "llmkit.json":  # import writes its own
            theirs = copy / item.name
            if not theirs.is_file() or theirs.read_bytes() != item.read_bytes():
                return False
    return True
