"""The HTTP API against a hostile client and hostile files, on a real server: an adapter folder built to crash the
loader (a damaged header, `r: 0`, a rank that is not a number, tensors of another model's sizes) is a one-line 400
through the admin route and one line before any model loads at start, never a 500; hostile names and numbers in
requests are OpenAI-shaped 4xx."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import requests
import torch
from safetensors.torch import save_file

from llmkit.errors import UserError
from tests.serve.conftest import start_server

ADMIN = "admin-key-for-hostile-tests"
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def _adapter(root: Path, name: str, base: Path, hidden: int, config: dict | None = None,
             tensors: dict | None = None, raw: bytes | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(base), "peft_type": "LORA", "r": 4, "lora_alpha": 8,
         "target_modules": ["q_proj"], "task_type": "CAUSAL_LM", **(config or {})}))
    if raw is not None:
        (folder / "adapter_model.safetensors").write_bytes(raw)
    else:
        save_file(tensors or {Q_A: torch.zeros(4, hidden), Q_B: torch.zeros(hidden, 4)},
                  str(folder / "adapter_model.safetensors"))
    return folder


def _giant_header() -> bytes:
    header = json.dumps({Q_A: {"dtype": "F32", "shape": [10**6], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * 4


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_model) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-adapters")
    hidden = json.loads((tiny_model.path / "config.json").read_text())["hidden_size"]
    base = tiny_model.path
    return {
        "good": _adapter(root, "good", base, hidden),
        "giant-header": _adapter(root, "giant-header", base, hidden, raw=_giant_header()),
        "rank-zero": _adapter(root, "rank-zero", base, hidden, config={"r": 0}),
        "rank-words": _adapter(root, "rank-words", base, hidden, config={"r": "many"}),
        "other-sizes": _adapter(root, "other-sizes", base, hidden,
                                tensors={Q_A: torch.zeros(4, hidden + 7), Q_B: torch.zeros(3, 4)}),
    }


@pytest.fixture(scope="module")
def url(lm_workspace: Path, tiny_model):
    running, _ = start_server(lm_workspace, ["tiny-lm"], admin_keys=[ADMIN], max_batch=2, workers=1)
    yield running.url
    running.stop()


@pytest.mark.parametrize(("adapter", "says"), [
    ("giant-header", "4,000,000 bytes) over 4 bytes"),
    ("rank-zero", "r = 0; a LoRA rank is a whole number from 1"),
    ("rank-words", "r = 'many'"),
    ("other-sizes", "does not fit 'tiny-lm'"),
])
def test_a_hostile_adapter_loaded_at_run_time_is_a_one_line_400(url, hostile, adapter: str, says: str):
    r = requests.post(url + "/v1/adapters", json={"adapter": str(hostile[adapter]), "name": f"h-{adapter}"},
                      headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert says in error["message"] and "\n" not in error["message"] and error["param"] == "adapter", error
    assert requests.get(url + "/v1/models", timeout=30).status_code == 200  # the server goes on serving


def test_a_well_formed_adapter_still_loads_and_unloads(url, hostile):
    auth = {"Authorization": f"Bearer {ADMIN}"}
    r = requests.post(url + "/v1/adapters", json={"adapter": str(hostile["good"]), "name": "h-good"}, headers=auth,
                      timeout=60)
    assert r.status_code == 200 and r.json()["parent"] == "tiny-lm", r.text
    assert requests.delete(url + "/v1/adapters/h-good", headers=auth, timeout=60).status_code == 200


@pytest.mark.parametrize("adapter", ["giant-header", "rank-zero"])
def test_a_hostile_adapter_named_at_start_is_one_line_before_any_model_loads(lm_workspace: Path, tiny_model, hostile,
                                                                               adapter: str):
    with pytest.raises(UserError) as err:
        running, _ = start_server(lm_workspace, ["tiny-lm"], adapters=[f"h={hostile[adapter]}"], workers=1)
        running.stop()
    assert str(hostile[adapter]) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("body", [
    {"model": "../../etc/passwd"},
    {"model": "/etc/passwd"},
    {"model": "tiny-lm\u0000"},
    {"model": "ｔｉｎｙ-lm"},
    {"model": "a" * 100_000},
    {"logit_bias": {"99999999999999999999999999": 5}},
    {"logit_bias": {"-1": 5}},
    {"n": 10**9},
    {"max_tokens": 10**12},
    {"stop": ["x"] * 1000},
    {"prompt": [[10**12]]},
], ids=lambda b: next(iter(b)) + ":" + str(next(iter(b.values())))[:20])
def test_hostile_fields_are_openai_shaped_4xx(url, body: dict):
    r = requests.post(url + "/v1/completions", json={"model": "tiny-lm", "prompt": "hi", "max_tokens": 2, **body},
                      timeout=60)
    assert 400 <= r.status_code < 500, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "\n" not in error["message"]


@pytest.mark.parametrize(("origins", "keys", "warned"), [
    (["*"], [], True),
    (["*"], ["api-key-for-hostile-tests"], False),
    (["http://app.example"], [], False),
])
def test_cors_for_any_origin_without_a_key_is_warned_about(lm_workspace: Path, tiny_model, origins, keys, warned):
    import io

    from rich.console import Console

    from llmkit.config import ServeConfig
    from llmkit.registry import Registry
    from llmkit.serve import start
    from llmkit.workspace import Workspace

    out = io.StringIO()
    ws = Workspace.open(lm_workspace)
    running = start(ServeConfig(models=["tiny-lm"], port=0, cors_origins=origins, api_keys=keys, workers=1), ws,
                    Registry.for_workspace(ws.root), console=Console(file=out, width=300))
    try:
        # what a page of any site gets: the answer is readable by it (the Host is the server's own name)
        r = requests.get(running.url + "/v1/models", headers={"Origin": "http://evil.example"}, timeout=30)
        readable = r.headers.get("access-control-allow-origin") in ("*", "http://evil.example") and r.ok
        assert readable == (origins == ["*"] and not keys)
        assert ("--cors-origin * without an API key" in out.getvalue()) == warned, out.getvalue()
    finally:
        running.stop()
