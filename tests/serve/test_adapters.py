"""Many adapters on one base, on the real server: two PEFT adapters of the tiny served LM decode in the base's
batches, each greedy answer equal token for token to its `llmkit merge`d model served beside it; an adapter loads
and unloads at run time with the admin key; one-line 4xx for what cannot be done."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests
import torch

from llmkit.models.io import load_causal_lm, resolve_model
from llmkit.registry import Registry
from llmkit.train.lora import merge, save_adapter
from llmkit.workspace import Workspace
from tests.serve.conftest import start_server

ADMIN = "admin-key-for-tests"
PROMPTS = ["ROMEO:\n", "JULIET:\nO ", "First Citizen:\nWe are", "KING:\nWhat"]


def _adapter(lm_workspace, base_name: str, n: int, targets: list[str]) -> str:
    from peft import LoraConfig, get_peft_model

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    base = resolve_model(base_name, registry)
    lm, tok = load_causal_lm(base)
    torch.manual_seed(10 + n)
    peft = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    folder = ws.new_folder("models", f"serve-adapter-{n}")
    save_adapter(peft, tok, folder, base, {"base": {"path": str(base.path), "ref": base.ref}, "task": "causal-lm"})
    merge(str(folder), ws, registry, name=f"serve-adapter-{n}-merged")
    return str(folder)


@pytest.fixture(scope="module")
def adapters(lm_workspace, serve_lm):
    return [_adapter(lm_workspace, serve_lm, 1, ["q_proj", "v_proj"]),
            _adapter(lm_workspace, serve_lm, 2, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])]


@pytest.fixture(scope="module")
def url(lm_workspace, serve_lm, adapters):
    running, _ = start_server(lm_workspace, [f"base={serve_lm}", "m1=serve-adapter-1-merged",
                                             "m2=serve-adapter-2-merged"],
                              adapters=[f"a1={adapters[0]}", f"a2={adapters[1]}"], admin_keys=[ADMIN], max_batch=16,
                              workers=1)
    yield running.url
    running.stop()


def _complete(url: str, model: str, prompt: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    return client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0).choices[0].text


def test_adapters_in_one_batch_equal_their_merged_models(url):
    jobs = [(m, p) for p in PROMPTS for m in ("base", "a1", "a2")]
    with ThreadPoolExecutor(len(jobs)) as pool:  # all at once: base and adapter rows share the base's batches
        got = dict(zip(jobs, pool.map(lambda job: _complete(url, *job), jobs), strict=True))
    for p in PROMPTS:
        assert got[("a1", p)] == _complete(url, "m1", p)
        assert got[("a2", p)] == _complete(url, "m2", p)
    assert any(got[("a2", p)] != got[("base", p)] for p in PROMPTS), "the adapter should change the answers"
    cards = {c["id"]: c for c in requests.get(url + "/v1/models", timeout=10).json()["data"]}
    assert cards["a1"]["parent"] == cards["a2"]["parent"] == "base" and cards["m1"]["parent"] is None
    # no module of its own to explain: said so (it said "it is a causal on torch"), and the web UI hides Explain
    assert not cards["a1"]["explainable"] and cards["m1"]["explainable"]
    r = requests.post(url + "/v1/explain", json={"model": "a1", "input": "ROMEO:"}, timeout=60)
    assert r.status_code == 400 and "is a LoRA adapter" in r.json()["error"]["message"] and "llmkit merge" in r.text
    metrics = requests.get(url + "/metrics", timeout=10).text
    sizes = [line for line in metrics.splitlines() if line.startswith('llmkit_batch_size_bucket{le="1.0",model="base"}')]
    total = [line for line in metrics.splitlines() if line.startswith('llmkit_batch_size_count{model="base"}')]
    assert float(sizes[0].rsplit(" ", 1)[1]) < float(total[0].rsplit(" ", 1)[1]), "steps with several rows"


def test_load_and_unload_at_run_time_with_the_admin_key(url, adapters):
    body = {"adapter": adapters[0], "name": "a1-again"}
    r = requests.post(url + "/v1/adapters", json=body, timeout=60)
    assert r.status_code == 401 and "admin key" in r.json()["error"]["message"]
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = requests.post(url + "/v1/adapters", json=body, headers=admin, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["parent"] == "base"
    assert _complete(url, "a1-again", PROMPTS[0]) == _complete(url, "m1", PROMPTS[0])
    assert "a1-again" in [a["id"] for a in requests.get(url + "/v1/adapters", timeout=10).json()["data"]]
    assert requests.delete(url + "/v1/adapters/a1-again", headers=admin, timeout=60).status_code == 200
    r = requests.post(url + "/v1/completions", json={"model": "a1-again", "prompt": "x", "max_tokens": 2}, timeout=60)
    assert r.status_code == 404
    assert _complete(url, "a1", PROMPTS[0]) == _complete(url, "m1", PROMPTS[0]), "the others keep their deltas"


@pytest.mark.parametrize(("method", "path", "body", "status", "says"), [
    ("post", "/v1/adapters", {"adapter": "serve-adapter-1-merged"}, 400, "not a LoRA adapter"),
    ("post", "/v1/adapters", {"adapter": "no-such-adapter"}, 400, "no-such-adapter"),
    ("post", "/v1/adapters", {"adapter": "ADAPTER1", "name": "a2"}, 400, "already served"),
    ("delete", "/v1/adapters/base", None, 404, "no adapter named 'base'"),
    ("delete", "/v1/adapters/nope", None, 404, "adapters: a1, a2"),
])
def test_what_cannot_be_done_is_a_one_line_4xx(url, adapters, method, path, body, status, says):
    if body and body["adapter"] == "ADAPTER1":
        body = {**body, "adapter": adapters[0]}
    r = getattr(requests, method)(url + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert says in error["message"] and "\n" not in error["message"], error


def test_a_server_without_admin_keys_keeps_its_adapters(server):
    r = requests.post(server.base_url + "/v1/adapters", json={"adapter": "x"}, timeout=30)
    assert r.status_code == 403 and "--admin-key" in r.json()["error"]["message"]


def test_an_adapter_of_a_base_off_the_fast_path_is_served_merged_under_its_name(tmp_path, tiny_model):
    # GPT-2 decodes on the HF module: `--adapter g=LORA` was refused where `serve BASE LORA` served it merged
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    ws = Workspace.open(tmp_path / "ws")
    registry = Registry.for_workspace(ws.root)
    base_dir = tmp_path / "gpt2"
    tok = AutoTokenizer.from_pretrained(tiny_model.path)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(base_dir)
    for file in tiny_model.path.iterdir():
        if "token" in file.name:
            shutil.copy(file, base_dir / file.name)
    base = resolve_model(str(base_dir), registry)
    lm, tok = load_causal_lm(base)
    peft = get_peft_model(lm, LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"]))
    adapter = ws.new_folder("models", "gpt2-lora")
    save_adapter(peft, tok, adapter, base, {"base": {"path": str(base.path), "ref": base.ref}, "task": "causal-lm"})
    running, _ = start_server(ws.root, [str(base_dir)], adapters=[f"g={adapter}"], workers=1)
    try:
        served = running.app.state.llmkit.models["g"]
        assert served.parent is None and served.model.path == adapter  # a merged copy, under the name asked for
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        assert client.completions.create(model="g", prompt="ROMEO:", max_tokens=3, temperature=0).choices[0].text
    finally:
        running.stop()
