"""Hostile model files, as someone handing over a model folder would write them: links out of the folder, a
tokenizer asking for its own Python code, safetensors and GGUF headers built to crash the checks. Each is
refused in one line before anything is written (exit 2 on the CLI), never a traceback and never a copy of a
file from elsewhere on the disk in the workspace."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from tests import tiny_lm
from tests.conftest import run_cli

from llmkit.errors import UserError
from llmkit.models.files import check_gguf_file, check_safetensors_file
from llmkit.models.importing import import_model
from llmkit.registry import Registry
from llmkit.workspace import Workspace

SECRET = "ssh-rsa AAAA-the-user's-private-key"


@pytest.fixture()
def ws(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    return ws, Registry.for_workspace(ws.root)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    tok = tiny_lm.char_tokenizer()
    folder = tmp_path_factory.mktemp("hf") / "tiny"
    tiny_lm.make_model(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture()
def copy(hf_folder: Path, tmp_path: Path):
    def make(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(hf_folder, target)
        return target

    return make


def _refused(ws, source: Path, *says: str) -> str:
    ws, reg = ws
    with pytest.raises(UserError) as err:
        import_model(str(source), None, ws, reg)
    message = str(err.value)
    assert "\n" not in message and all(s in message for s in says), message
    assert reg.list("model") == [] and not any((ws.root / "models").iterdir())  # nothing written
    return message


def test_a_link_to_a_file_outside_the_folder_is_refused_not_copied_in(ws, copy, tmp_path: Path):
    secret = tmp_path / "id_rsa"
    secret.write_text(SECRET)
    folder = copy("linked-out")
    os.symlink(secret, folder / "notes.txt")
    _refused(ws, folder, "notes.txt", "outside the folder")
    assert not any(SECRET in p.read_text(errors="ignore") for p in ws[0].root.rglob("*") if p.is_file())

    # a link that stays inside the folder is the folder's own file: imported
    inside = copy("linked-in")
    os.symlink("config.json", inside / "config-copy.json")
    model, _ = import_model(str(inside), None, *ws)
    assert (model.path / "config-copy.json").read_text() == (inside / "config.json").read_text()


def test_a_hugging_face_cache_snapshot_linking_its_blobs_imports(ws, hf_folder: Path, tmp_path: Path):
    repo = tmp_path / "models--someone--tiny"
    snapshot, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for f in hf_folder.iterdir():
        shutil.copy(f, blobs / f.name)
        os.symlink(Path("../../blobs") / f.name, snapshot / f.name)
    model, _ = import_model(str(snapshot), "tiny", *ws)
    assert (model.path / "model.safetensors").stat().st_size == (hf_folder / "model.safetensors").stat().st_size


def test_a_tokenizer_asking_for_its_own_code_is_refused_at_import(ws, copy):
    folder = copy("tokenizer-code")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config |= {"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", None]}, "tokenizer_class": "EvilTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text("raise SystemExit('ran')\n")
    _refused(ws, folder, "tokenizer_config.json", "auto_map")


def _safetensors(path: Path, header, data: bytes = b"\0" * 4) -> Path:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(("entry", "says"), [
    ({"dtype": "F32", "shape": [1], "data_offsets": "ab"}, "data_offsets"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [1], "data_offsets": {"a": 1}}, "data_offsets"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "data_offsets"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}, "data_offsets"),
    ({"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}, "shape"),
    ({"dtype": 7, "shape": [1], "data_offsets": [0, 4]}, "dtype"),
    ([1, 2], "not a JSON object"),
    # a giant tensor claimed over four bytes of data
    ({"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4]}, "4,000,000,000,000 bytes"),
])
def test_a_safetensors_header_built_to_crash_the_check_is_one_line(tmp_path: Path, entry, says: str):
    file = _safetensors(tmp_path / "model.safetensors", {"w": entry})
    with pytest.raises(UserError) as err:
        check_safetensors_file(file)
    assert says in str(err.value) and str(file) in str(err.value)


def test_a_safetensors_header_nested_thousands_deep_is_one_line(tmp_path: Path):
    file = _safetensors(tmp_path / "model.safetensors", b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(UserError, match="not JSON"):
        check_safetensors_file(file)


def test_the_cli_says_a_hostile_header_in_one_line_with_exit_2(copy, tmp_path: Path):
    folder = copy("cli")
    _safetensors(folder / "model.safetensors", {"w": {"dtype": "F32", "shape": [1], "data_offsets": "ab"}})
    proc = run_cli("import", str(folder), workspace=tmp_path / "cli-ws", timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    said = (proc.stdout + proc.stderr).strip()
    assert "Traceback" not in said and "data_offsets" in said and said.count("\n") == 0, said


def _gguf(path: Path, kv: bytes, n_kv: int = 1) -> Path:
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, n_kv) + kv + b"\0" * 64)
    return path


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


@pytest.mark.parametrize(("kv", "says"), [
    (_key("general.alignment") + struct.pack("<II", 4, 0), "alignment"),                    # a division by zero
    (_key("general.alignment") + struct.pack("<I", 8) + _key("32"), "alignment"),           # a string
    (_key("x") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 5000 + struct.pack("<IQ", 0, 0), "nested"),
], ids=["alignment-zero", "alignment-string", "arrays-5000-deep"])
def test_a_gguf_header_built_to_crash_the_check_is_one_line(tmp_path: Path, kv: bytes, says: str):
    file = _gguf(tmp_path / "m.gguf", kv)
    with pytest.raises(UserError) as err:
        check_gguf_file(file)
    assert says in str(err.value) and "damaged GGUF" in str(err.value)
