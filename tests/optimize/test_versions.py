"""Every registered version of a derived model has its own folder; `rm` of one never touches another's;
a --name that would leave the workspace is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.config import ExportConfig, PruneConfig, QuantizeConfig
from llmkit.models.io import resolve_model
from llmkit.optimize.export import export
from llmkit.optimize.prune import prune
from llmkit.optimize.quantize import quantize
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.conftest import run_cli

# i: the run; each runs with other settings the second time (the same settings return the version made before:
# optimize.made_before). ONNX: the default quant (GGUF's q8_0 as given, f32 as written) against q8_0 asked for.
DERIVE = {
    "quantize": lambda ws, reg, name, i=0: quantize("tiny-lm", QuantizeConfig(
        method=("int8-weight", "int4-weight")[i], group_size=32, table=False, name=name), ws, reg),
    "prune": lambda ws, reg, name, i=0: prune("tiny-lm", PruneConfig(method="magnitude", sparsity=(0.5, 0.25)[i], table=False,
                                                                     name=name), ws, reg),
    "gguf": lambda ws, reg, name, i=0: export("tiny-lm", ExportConfig(quant=("f16", "f32")[i], table=False, name=name), ws, reg),
    "onnx": lambda ws, reg, name, i=0: export("tiny-lm", ExportConfig(format="onnx", table=False, name=name,
                                                                      **({"quant": "q8_0"} if i else {})), ws, reg),
}


@pytest.mark.parametrize("command", list(DERIVE))
def test_a_rerun_with_other_settings_is_a_new_version_in_its_own_folder_and_removing_v1_keeps_v2(lm_workspace: Path, tiny_model, command: str):
    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    name = f"again-{command}"
    v1, _ = DERIVE[command](ws, reg, name)
    v2, _ = DERIVE[command](ws, reg, name, 1)
    assert (v1.version, v2.version) == (1, 2)
    again, _ = DERIVE[command](ws, reg, name)  # the first settings again: the version made with them
    assert (again.id, again.path) == (v1.id, v1.path) and len(reg.list("model", name=name)) == 2
    assert v1.path != v2.path and v1.path.parent == v2.path.parent == ws.root / "models"
    v2_files = {p.name: p.stat().st_size for p in v2.path.iterdir()}

    proc = run_cli("rm", f"{name}:v1", "--yes", workspace=lm_workspace)
    assert proc.returncode == 0, proc.stderr
    assert not v1.path.exists()
    assert {p.name: p.stat().st_size for p in v2.path.iterdir()} == v2_files
    assert resolve_model(name, reg).path == v2.path  # v2 is still whole and addressable


def test_rm_keeps_a_folder_that_another_version_still_points_at(lm_workspace: Path, tiny_model):
    # Workspaces written before each version had its own folder hold versions sharing one.
    reg = Registry.for_workspace(lm_workspace)
    shared = lm_workspace / "models" / "legacy-shared"
    shared.mkdir()
    (shared / "weights.safetensors").write_bytes(b"x")
    reg.add("model", "legacy", path=shared)
    reg.add("model", "legacy", path=shared)
    proc = run_cli("rm", "legacy:v1", "--yes", workspace=lm_workspace)
    assert proc.returncode == 0, proc.stderr
    assert (shared / "weights.safetensors").exists() and "legacy:v2 also use" in proc.stdout
    assert [r.version for r in reg.list("model", "legacy")] == [2]
    proc = run_cli("rm", "legacy:v2", "--yes", workspace=lm_workspace)  # the last one takes the folder
    assert proc.returncode == 0 and not shared.exists()


@pytest.mark.parametrize("args", [
    ["quantize", "tiny-lm", "--method", "int8-weight", "--name", "../../../outside"],
    ["export", "tiny-lm", "--quant", "f16", "--name", "../../outside"],
    ["prune", "tiny-lm", "--method", "magnitude", "--name", "/tmp/outside"],
], ids=["quantize", "export", "prune"])
def test_a_name_that_would_leave_the_workspace_is_refused_before_anything_is_written(lm_workspace: Path, tiny_model, args):
    above = [lm_workspace.parent, lm_workspace.parent.parent, Path("/tmp")]  # where each name would have written

    def outside() -> set[Path]:  # other processes write in /tmp meanwhile: only our names count
        return {p for folder in above for p in folder.iterdir() if "outside" in p.name}

    before = outside()
    models_before = set((lm_workspace / "models").iterdir())
    proc = run_cli(*args, workspace=lm_workspace)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: model name") and "use ASCII letters (a-z, A-Z), digits" in line
    assert outside() == before
    assert set((lm_workspace / "models").iterdir()) == models_before
    assert not any("outside" in r.name for r in Registry.for_workspace(lm_workspace).list())


def test_what_cannot_be_compressed_or_exported_is_one_line_before_anything_is_written(lm_workspace: Path, tiny_model,
                                                                                          sms_classifier):
    """A classifier was loaded as a causal LM (its trained head lost), registered, then refused; a quantized model
    failed with ZeroDivisionError or KeyError (exit 1); an export under its source's name became the source's v2."""
    from llmkit.errors import UserError

    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    before = {r.id for r in reg.list("model")}
    with pytest.raises(UserError, match=r"sms-clf:v\d+ is a classifier; quantize takes causal language models .*--format onnx"):
        quantize("sms-clf", QuantizeConfig(table=False), ws, reg)
    with pytest.raises(UserError, match=r"is a classifier; prune takes causal language models"):
        prune("sms-clf", PruneConfig(method="magnitude", table=False), ws, reg)
    # an encoder was sent to `export --format onnx`, which refuses it too
    with pytest.raises(UserError, match=r"minilm-l6 is an encoder without a language-model head; quantize takes causal "
                                        r"language models \(fine-tune it into a classifier first, llmkit train classify"):
        quantize("minilm-l6", QuantizeConfig(table=False), ws, reg)
    small = quantize("tiny-lm", QuantizeConfig(method="int8-weight", group_size=32, table=False), ws, reg)[0]
    with pytest.raises(UserError, match=rf"{small.ref} is quantized \(int8-weight\); prune the model it came from \(tiny-lm"):
        prune(small.id, PruneConfig(method="magnitude", table=False), ws, reg)
    for fmt in ("gguf", "onnx"):
        with pytest.raises(UserError, match=rf"{small.ref} is quantized \(int8-weight\); export the model it came from"):
            export(small.id, ExportConfig(format=fmt, table=False), ws, reg)
    with pytest.raises(UserError, match=r"export.name = 'tiny-lm' is the name of tiny-lm:v\d+ \(a causal-lm model\)"):
        export("tiny-lm", ExportConfig(quant="f16", table=False, name="tiny-lm"), ws, reg)
    assert {r.id for r in reg.list("model")} - before == {small.id}


def test_a_model_with_no_dataset_of_its_own_is_measured_on_eval_data_or_the_table_says_why_not(lm_workspace: Path,
                                                                                              tiny_model, tmp_path):
    """Built-in and imported models (the usual thing to ship) have no dataset in their lineage: the perplexity column
    went missing without a word, and nothing could bring it back."""
    import io
    import shutil

    from rich.console import Console

    from llmkit.errors import UserError

    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    bare = tmp_path / "bare-lm"
    shutil.copytree(tiny_model.path, bare)
    (bare / "llmkit.json").unlink()  # as a folder from elsewhere
    said = io.StringIO()
    cfg = QuantizeConfig(method="int8-weight", group_size=32, eval_max_examples=4)
    _, rows = quantize(str(bare), cfg, ws, reg, console=Console(file=said, width=300))
    assert "perplexity" not in rows[0] and "no perplexity column: " in said.getvalue() and "--eval-data NAME" in said.getvalue()
    _, rows = quantize(str(bare), cfg.model_copy(update={"eval_data": "tiny"}), ws, reg)
    assert rows[0]["perplexity"] > 1 and rows[1]["perplexity"] == pytest.approx(rows[0]["perplexity"], rel=0.05)
    models = len(reg.list("model"))
    with pytest.raises(UserError, match=r"^quantize.eval_data = 'nope' \(--eval-data\): no dataset named 'nope'"):
        quantize(str(bare), cfg.model_copy(update={"eval_data": "nope"}), ws, reg)
    with pytest.raises(UserError, match=r"^prune.eval_data = 'nope' \(--eval-data\): no dataset named 'nope'"):
        prune(str(bare), PruneConfig(eval_data="nope"), ws, reg)  # the key path, as other bad values have it
    assert len(reg.list("model")) == models  # refused before anything was written


def test_bench_model_defaults_fit_a_small_context(lm_workspace: Path, tiny_model, tmp_path):
    """128 + 64 tokens by default: a 64-token model was refused while the export table measured it (with 32 + 32)."""
    import json
    import shutil

    from llmkit.config import BenchModelConfig
    from llmkit.errors import UserError
    from llmkit.eval import bench_model

    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    small = tmp_path / "small-context"
    shutil.copytree(tiny_model.path, small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    figures = bench_model(str(small), BenchModelConfig(runs=1, warmup=0), ws, reg).metrics
    assert (figures["prompt_tokens"], figures["new_tokens"]) == (32, 32) and figures["decode_tokens_per_s"] > 0
    with pytest.raises(UserError, match=r"prompt_tokens \+ new_tokens = 164 exceeds the model's context of 64"):
        bench_model(str(small), BenchModelConfig(prompt_tokens=100, runs=1), ws, reg)  # given values are kept


def test_a_built_in_models_name_is_refused_before_anything_is_written(lm_workspace: Path, tiny_model):
    """`quantize tiny-lm --name smollm2-135m` registered smollm2-135m:v1: `show` read it, every other command the
    built-in."""
    from llmkit.errors import UserError

    ws = Workspace.open(lm_workspace)
    reg = Registry.for_workspace(ws.root)
    models = len(reg.list("model"))
    with pytest.raises(UserError, match=r"^quantize.name = 'smollm2-135m' is a built-in model's name .*choose another --name$"):
        quantize("tiny-lm", QuantizeConfig(name="smollm2-135m", table=False), ws, reg)
    with pytest.raises(UserError, match=r"^prune.name = 'minilm-l6' is a built-in model's name"):
        prune("tiny-lm", PruneConfig(name="minilm-l6", table=False), ws, reg)
    with pytest.raises(UserError, match=r"^export.name = 'smollm2-135m' is a built-in model's name"):
        export("tiny-lm", ExportConfig(format="gguf", name="smollm2-135m", table=False), ws, reg)
    assert len(reg.list("model")) == models and not list((ws.root / "models").glob("smollm2-135m*"))
