"""LoRA adapters served on a base the server already runs: each adapter is a model id of its own (as vLLM
lists its LoRA modules), decoded by the base's engine, its rows in the same batches as the base's and every other
adapter's (`runtime.lora_rows`). `llmkit serve BASE --adapter NAME=ADAPTER` attaches them at start;
`POST /v1/adapters` (admin key) at run time, and `DELETE /v1/adapters/NAME` takes one away once no request uses it.

A base off the fast path (another architecture, llama.cpp, ONNX) cannot add deltas per row: an adapter of it is
served merged instead, as a model of its own under the name asked for (a speed and memory difference, not an error)
at start, and refused at run time with one line saying so (loading a merged copy is not a quick change).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import replace
from pathlib import Path

from llmkit.errors import UserError
from llmkit.models.files import check_adapter
from llmkit.models.io import Model, adapter_base, is_adapter, resolve_model
from llmkit.runtime.decoder import get_decoder
from llmkit.runtime.fast_llama import FastLlama
from llmkit.runtime.lora_rows import AdapterSet, read_adapter
from llmkit.serve.served import ServedModel

_ids = itertools.count(1)  # adapter ids are never reused: a prefix cache entry or a row names one adapter only
_lock = threading.Lock()  # attach/detach rebuild a base's adapter set one at a time


class NoFastBase(UserError):
    """The base decodes without FastLlama: adapters cannot share its batches."""

    def __init__(self, message: str, base_id: str):
        super().__init__(message)
        self.base_id = base_id


def split_spec(spec: str) -> tuple[str | None, str]:
    """`NAME=ADAPTER` or `ADAPTER` -> (name or None, adapter ref)."""
    name, _, ref = spec.rpartition("=")
    return (name or None), ref


def base_for(adapter: Model, models: dict[str, ServedModel]) -> ServedModel | None:
    """The served base the adapter was trained on (same folder), if the server runs it."""
    base = adapter_base(adapter)
    want = Path(base.path).resolve() if Path(base.path).exists() else None
    for served in models.values():
        if served.kind == "causal" and served.parent is None and want is not None \
                and Path(served.model.path).resolve() == want:
            return served
    return None


def fast_base(served: ServedModel) -> FastLlama | None:
    """The base's FastLlama, when it decodes on it (adapters can then share its batches)."""
    if served.backend != "torch" or served.net is None:
        return None
    dec = get_decoder(served.net)
    return dec if isinstance(dec, FastLlama) else None


def _adapter(ref: str, registry) -> Model:
    adapter = resolve_model(ref, registry)
    if not is_adapter(adapter.path):
        raise UserError(f"{adapter.ref} is not a LoRA adapter (its folder has no adapter_config.json); name an "
                        "adapter trained with --method lora, or serve the model itself")
    check_adapter(Path(adapter.path))  # a damaged or hostile file: one line, before any library reads it
    return adapter


def _read(folder: Path, name: str, base: ServedModel, dtype):
    """The adapter's layout for the base; one line when its config or weights do not make one (`r: 0`, a rank that
    is not a number, tensors of another model's sizes): a file of someone else's, not a fault of the server."""
    try:
        return read_adapter(folder, name, base.net, dtype)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the file made the reader raise
        raise UserError(f"adapter '{name}' ({folder}) does not fit '{base.id}': {type(err).__name__}: "
                        f"{' '.join(str(err).split())[:200]}; check its adapter_config.json and weights, or serve it "
                        "merged (llmkit merge)") from None


def _not_served(adapter: Model, name: str, ref: str, served: list[str]) -> UserError:
    """The adapter's base is not among the models served: named as the registry names it (smol:v1, not the folder
    smol-34f2a3f2, which no command resolves), in a command that serves it beside the `served` ones."""
    base = adapter_base(adapter).ref
    models = " ".join([*served, base])
    return UserError(f"{adapter.ref} was trained on {base}, which this server does not serve; serve that base too "
                     f"(llmkit serve {models} --adapter {name}={ref})")


def check_bases(adapter_specs: list[str], model_specs: list[str], registry) -> None:
    """Each `--adapter`'s base is among the models `model_specs` serves: said before any model loads (it was said
    once the other models had loaded, a minute in for a large one)."""
    bases = set()
    for spec in model_specs:
        model = resolve_model(split_spec(spec)[1], registry)
        if not is_adapter(model.path) and Path(model.path).exists():
            bases.add(Path(model.path).resolve())
    for spec in adapter_specs:
        name, ref = split_spec(spec)
        adapter = _adapter(ref, registry)
        base = Path(adapter_base(adapter).path)
        if not base.exists() or base.resolve() not in bases:
            raise _not_served(adapter, name or adapter.alias or adapter.name, ref, model_specs)


def attach(name: str | None, ref: str, models: dict[str, ServedModel], registry) -> ServedModel:
    """Serve adapter `ref` as model `name` on its base among `models`; the new ServedModel (not yet in `models`)."""
    from llmkit.models.io import load_tokenizer_for

    adapter = _adapter(ref, registry)
    name = name or adapter.alias or adapter.name
    if name in models:
        raise UserError(f"a model named '{name}' is already served; give the adapter another name (NAME=ADAPTER)")
    base = base_for(adapter, models)
    if base is None:
        raise _not_served(adapter, name, ref, [])
    fast = fast_base(base)
    if fast is None:
        raise NoFastBase(f"'{base.id}' runs on {base.backend} without llmkit's fast decoder, so adapters cannot share its "
                        f"batches; serve {adapter.ref} merged as a model of its own (llmkit serve {ref})", base.id)
    layout = _read(Path(adapter.path), name, base, fast.dtype)
    with _lock:
        adapter_id = next(_ids)
        base.adapters[adapter_id] = layout
        fast.adapters = AdapterSet.of({k: v for k, v in base.adapters.items()})
    # net=None: explanations run the base's module, which would explain the base, not the adapter
    return replace(base, id=name, model=adapter, tokenizer=load_tokenizer_for(adapter), parent=base.id,
                   adapter_id=adapter_id, adapters={}, net=None, lock=threading.Lock())


def detach(served: ServedModel, models: dict[str, ServedModel]) -> None:
    """Stop serving an adapter: its base stops adding its delta. Refused while requests use it."""
    base = models[served.parent]
    busy = served.engine.adapter_rows.get(served.adapter_id, 0)
    if busy:
        raise UserError(f"adapter '{served.id}' has {busy} request(s) running or queued; retry once they finish")
    fast = fast_base(base)
    with _lock:
        base.adapters.pop(served.adapter_id, None)
        fast.adapters = AdapterSet.of({k: v for k, v in base.adapters.items()})
