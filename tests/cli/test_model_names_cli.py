"""How a MODEL argument resolves, through the real CLI: a Hub id on a machine without the Hub is one fast line (it
was "an encoder without a language-model head", "embeddings need a local model folder", or ~50 s of retries), a Hub
id already in the Hugging Face cache runs offline, a close name is suggested, and an adapter's base is named as the
registry names it (name:vN), not by its folder."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests import tiny_lm

from llmkit.errors import UserError
from llmkit.models.io import Model, adapter_base, resolve_model
from llmkit.registry import Registry
from llmkit.workspace import Workspace

SHA = "0123456789abcdef0123456789abcdef01234567"


def _cli(*args: str, workspace: Path, env: dict[str, str], timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full.update({"LLMKIT_HOME": str(workspace), **env})
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, timeout=timeout,
                          env=full)
    return proc, time.monotonic() - start


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "Retrying" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny real Llama model folder (safetensors, tokenizer), as a Hub snapshot would hold."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-lm"
    tok = tiny_lm.char_tokenizer()
    tiny_lm.make_model(tok).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture
def offline_env(tmp_path: Path) -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf-cache")}


COMMANDS = [
    ["generate", "some/typo-model", "--prompt", "hi"],
    ["predict", "some/typo-model", "hi"],
    ["serve", "some/typo-model", "--port", "0"],
    ["bench-model", "some/typo-model"],
    ["quantize", "some/typo-model"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=[a[0] for a in COMMANDS])
def test_a_hub_id_offline_is_one_fast_line(args: list[str], tmp_path: Path, offline_env):
    proc, seconds = _cli(*args, workspace=tmp_path / "ws", env=offline_env)
    line = _one_line(proc)
    assert "no model 'some/typo-model': not in the registry, not a local folder, nor in the Hugging Face cache" in line
    assert "cannot be reached (offline: HF_HUB_OFFLINE is set)" in line and "encoder" not in line, line
    assert seconds < 60, seconds


def test_a_hub_tokenizer_offline_is_one_fast_line(tmp_path: Path, offline_env):
    text = tmp_path / "t.txt"
    text.write_text("some text to prepare\n\nand more of it\n")
    proc, _ = _cli("data", "prepare", str(text), "--task", "lm", "--tokenizer", "nosuch/path",
                   workspace=tmp_path / "ws", env=offline_env)
    line = _one_line(proc)
    assert "data.tokenizer = 'nosuch/path'" in line and "cannot be reached (offline" in line, line
    assert "bpe:VOCAB" in line


def test_an_unreachable_hub_is_asked_once(tmp_path: Path):
    with socket.socket() as sock:  # a port nothing listens on: the connection is refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_CACHE": str(tmp_path / "hf-cache")}
    proc, seconds = _cli("generate", "HuggingFaceTB/smollm2-135m", "--prompt", "hi", workspace=tmp_path / "ws", env=env)
    line = _one_line(proc)
    assert "the Hugging Face Hub cannot be reached (offline: ConnectError" in line, line
    assert line.endswith("did you mean 'smollm2-135m'?"), line  # the built-in of that name
    assert seconds < 60, seconds  # transformers retried every file five times: ~50 s here


def test_a_hub_model_in_the_cache_runs_offline(tmp_path: Path, tiny_folder: Path, offline_env):
    repo = Path(offline_env["HF_HUB_CACHE"]) / "models--tiny-org--tiny-lm"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    import shutil

    shutil.copytree(tiny_folder, repo / "snapshots" / SHA)
    proc, _ = _cli("generate", "tiny-org/tiny-lm", "--prompt", "the cat", "--max-new-tokens", "4", "--no-stream",
                   workspace=tmp_path / "ws", env=offline_env)
    assert proc.returncode == 0, proc.stderr
    assert "the cat" in proc.stdout


def test_a_close_built_in_name_is_suggested(tmp_path: Path):
    registry = Registry.for_workspace(Workspace.open(tmp_path / "ws").root)
    with pytest.raises(UserError, match=r"did you mean 'minilm-l6'\?"):
        resolve_model("minilm-L6", registry)
    with pytest.raises(UserError, match="no model 'nosuch/'"):  # not a Hub id: no Hub asked
        resolve_model("nosuch/", registry)
    # an empty registry names the workspace it read: a mistyped --workspace made one and "none yet" hid the typo
    with pytest.raises(UserError, match=re.escape(f"no models are registered yet in {tmp_path / 'ws'} (check --workspace")):
        resolve_model("my-model", registry)


@pytest.fixture
def adapter_ws(tmp_path: Path, tiny_folder: Path) -> tuple[Path, str]:
    """A workspace with base 'tbase' (folder tbase-1a2b3c), another model 'other', and adapter 'tadapter' of tbase."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.train.lora import save_adapter

    ws = Workspace.open(tmp_path / "ws")
    registry = Registry.for_workspace(ws.root)
    for name, folder in (("tbase", "tbase-1a2b3c"), ("other", "other-4d5e6f")):
        shutil.copytree(tiny_folder, ws.root / "models" / folder)
        rec = registry.add("model", name, kind="causal-lm", path=ws.root / "models" / folder)
    base = resolve_model("tbase", registry)
    assert base.ref == "tbase:v1" and rec.name == "other"
    torch.manual_seed(0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base.path), LoraConfig(r=2, lora_alpha=4,
                                                                                     target_modules=["q_proj"]))
    target = ws.root / "models" / "tadapter-7a8b9c"
    save_adapter(peft, AutoTokenizer.from_pretrained(base.path), target, base,
                 {"base": {"path": str(base.path), "ref": base.ref, "id": base.id}, "task": "causal-lm"})
    registry.add("model", "tadapter", kind="causal-lm", path=target)
    registry.close()
    return ws.root, "tadapter"


def test_an_adapters_base_is_named_by_its_registry_name(adapter_ws):
    root, adapter = adapter_ws
    base = adapter_base(resolve_model(adapter, Registry.for_workspace(root)))
    assert (base.ref, base.path.name) == ("tbase:v1", "tbase-1a2b3c")
    assert isinstance(base, Model) and base.id


def test_serving_an_adapter_without_its_base_names_the_base_before_anything_loads(adapter_ws):
    root, adapter = adapter_ws
    proc, _ = _cli("serve", "other", "--adapter", f"x={adapter}", "--port", "0", workspace=root, env={})
    line = _one_line(proc)
    assert "tadapter:v1 was trained on tbase:v1, which this server does not serve" in line, line
    assert "(llmkit serve other tbase:v1 --adapter x=tadapter)" in line and "tbase-1a2b3c" not in line, line
    assert "loaded" not in proc.stdout  # said before 'other' loaded (it was said after every model had)
    assert resolve_model("tbase:v1", Registry.for_workspace(root)).path.name == "tbase-1a2b3c"  # the advice resolves


def test_merge_names_the_base_by_its_registry_name(adapter_ws, cli_here):
    root, adapter = adapter_ws
    proc = cli_here("merge", adapter, workspace=root, check=True)
    assert "merged tadapter:v1 into tbase:v1" in proc.stdout, proc.stdout
