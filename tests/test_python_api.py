"""The Python API as the README writes it: `import llmkit` reaches every stage, `from llmkit.config import *` gives
every section, a registered name resolves without passing a registry, and one stage's result goes to the next."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit.config import EvalConfig, ExplainConfig
from llmkit.models.io import resolve_model


def test_a_plain_import_reaches_every_stage():
    import llmkit

    # the README's own spellings (they were AttributeErrors: llmkit/__init__ imported nothing)
    assert callable(llmkit.data.prepare) and callable(llmkit.train.pretrain) and callable(llmkit.eval.evaluate)
    assert callable(llmkit.explain.explain) and callable(llmkit.serve.start) and callable(llmkit.audit.bias_audit)
    assert callable(llmkit.optimize.quantize.quantize) and callable(llmkit.tune.tune)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        llmkit.nope  # noqa: B018


def test_star_import_of_the_config_gives_every_section():
    names: dict = {}
    exec("from llmkit.config import *", names)
    assert {"DataConfig", "PretrainConfig", "SftConfig", "ClassifyConfig", "EvalConfig", "QuantizeConfig", "ExplainConfig",
            "DpoConfig", "GrpoConfig", "TuneConfig"} <= set(names)


def test_names_resolve_in_the_workspace_and_a_stage_result_is_a_model(lm_workspace: Path, tiny_model, monkeypatch):
    from llmkit.eval import evaluate
    from llmkit.explain import explain

    monkeypatch.setenv("LLMKIT_HOME", str(lm_workspace))
    assert resolve_model(tiny_model) is tiny_model  # what pretrain() returned: a TypeError before
    report = evaluate(tiny_model, EvalConfig(data="tiny", split="val", context=32, max_examples=4))
    assert report.metrics["perplexity"] > 1
    # no registry given: the workspace's, as every other stage opens it (it said "no model 'tiny-lm'")
    exp = explain("tiny-lm", "ROMEO: what", ExplainConfig(method="occlusion", aopc_seeds=1))
    assert exp.tokens and len(exp.scores) == len(exp.tokens)


def test_every_dotted_name_the_readme_writes_resolves_after_a_plain_import_and_torch_waits():
    """`llmkit.train.preference.preference_tune`, `llmkit.train.grpo.grpo`, `llmkit.data.feedback...`,
    `llmkit.models.io...`, `llmkit.serve.app.create_app` were AttributeErrors after `import llmkit` (their packages
    did not import them), and `except llmkit.errors.UserError` was one too. A fresh interpreter: this one has them."""
    import subprocess
    import sys

    names = ["llmkit.train.preference.preference_tune", "llmkit.train.grpo.grpo", "llmkit.train.lora.merge",
             "llmkit.data.feedback.dataset_from_feedback", "llmkit.models.io.resolve_model",
             "llmkit.models.io.load_causal_lm", "llmkit.serve.app.create_app", "llmkit.runtime.backends.register_backend",
             "llmkit.errors.UserError"]
    script = ("import sys, llmkit\n"
              "light = 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
              f"for name in {names!r}:\n"
              "    assert callable(eval(name)), name\n"
              "try:\n"
              "    llmkit.train.nope\n"
              "except AttributeError as err:\n"
              "    assert \"no attribute 'nope'\" in str(err)\n"
              "assert len(dir(llmkit)) == len(set(dir(llmkit)))\n"
              "print(light)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"  # `import llmkit` alone imported neither torch nor transformers


def test_a_config_mistake_made_in_python_is_one_user_error_naming_the_key():
    from llmkit.config import DataConfig, SftConfig, validate_section
    from llmkit.errors import UserError

    # pydantic's four-line ValidationError before, without the did-you-mean a config file's typo gets
    with pytest.raises(UserError, match=r"unknown key 'DataConfig.tokenizr' \(did you mean 'tokenizer'\?\)"):
        DataConfig(tokenizr="char")
    with pytest.raises(UserError, match=r"unknown key 'SftConfig.lora.rr' \(did you mean 'r'\?\)"):
        SftConfig(lora={"rr": 4})
    with pytest.raises(UserError, match=r"SftConfig.max_steps = 'a few'"):
        SftConfig(max_steps="a few")
    # a config file's mistake still names the file's key path
    with pytest.raises(UserError, match=r"^x.yaml: unknown key 'sft.lora.rr'"):
        validate_section("sft", {"lora": {"rr": 4}}, source="x.yaml")
    # a Path where a file goes (it was "Input should be a valid string")
    assert DataConfig(inputs=[Path("a.txt"), "b.txt"]).inputs == ["a.txt", "b.txt"]
    assert DataConfig(inputs=Path("a.txt")).inputs == ["a.txt"]


def test_a_stage_given_a_dict_or_another_stages_config_says_which_config_it_takes(tmp_path: Path, monkeypatch):
    """Each was an AttributeError ('dict' object has no attribute 'resume') from inside the stage; nothing is
    written, not even the workspace."""
    import llmkit
    from llmkit.config import DpoConfig, SftConfig
    from llmkit.errors import UserError

    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "ws"))
    calls = {
        "llmkit.data.prepare takes a DataConfig": lambda: llmkit.data.prepare({"inputs": ["a.txt"]}),
        "llmkit.train.pretrain takes a PretrainConfig, not SftConfig": lambda: llmkit.train.pretrain(SftConfig()),
        "llmkit.train.sft takes a SftConfig": lambda: llmkit.train.sft({"base": "m"}),
        "llmkit.train.classify takes a ClassifyConfig": lambda: llmkit.train.classify({}),
        "llmkit.train.distill takes a DistillConfig": lambda: llmkit.train.distill({}),
        'preference_tune\\(..., "kto"\\) takes a KtoConfig, not DpoConfig':
            lambda: llmkit.train.preference.preference_tune(DpoConfig(), "kto"),
        "loss 'dp0' is not one of dpo, orpo, kto": lambda: llmkit.train.preference.preference_tune(DpoConfig(), "dp0"),
        "llmkit.train.grpo.grpo takes a GrpoConfig": lambda: llmkit.train.grpo.grpo({}),
        "llmkit.tune.tune takes a TuneConfig": lambda: llmkit.tune.tune({"stage": "classify"}),
        "llmkit.eval.evaluate takes an EvalConfig": lambda: llmkit.eval.evaluate("m", {"data": "d"}),
        "llmkit.eval.bench_model takes a BenchModelConfig": lambda: llmkit.eval.bench_model("m", {}),
        "quantize takes a QuantizeConfig, not NoneType": lambda: llmkit.optimize.quantize.quantize("m", None),
        "prune takes a PruneConfig": lambda: llmkit.optimize.prune.prune("m", {}),
        "export takes an ExportConfig": lambda: llmkit.optimize.export.export("m", {}),
        "llmkit.explain.explain takes an ExplainConfig": lambda: llmkit.explain.explain("m", "t", {"method": "ig"}),
        "llmkit.audit.bias_audit takes a BiasAuditConfig": lambda: llmkit.audit.bias_audit("m", {}),
        "llmkit.audit.privacy_audit takes a PrivacyAuditConfig": lambda: llmkit.audit.privacy_audit("m", {}),
        "llmkit.predict.predict takes a PredictConfig": lambda: llmkit.predict.predict("m", ["t"], {}),
        "llmkit.serve.start takes a ServeConfig": lambda: llmkit.serve.start({"models": ["m"]}),
        "dataset_from_feedback takes a FeedbackDataConfig": lambda: llmkit.data.feedback.dataset_from_feedback({}),
    }
    for message, call in calls.items():
        with pytest.raises(UserError, match=message):
            call()
    assert not (tmp_path / "ws").exists()


def test_a_workspace_is_a_folder_given_as_str_or_path(tmp_path: Path, monkeypatch):
    """`prepare(cfg, "my-ws")` was "'str' object has no attribute 'root'"."""
    import llmkit
    from llmkit.config import DataConfig
    from llmkit.errors import UserError
    from llmkit.workspace import Workspace

    monkeypatch.setenv("LLMKIT_DATA_WORKERS", "0")
    (tmp_path / "a.txt").write_text("to be or not to be\n\nthat is the question\n\nwhether tis nobler\n")
    cfg = DataConfig(inputs=[tmp_path / "a.txt"], name="a", tokenizer="char", doc_split="blank-line")
    first = llmkit.data.prepare(cfg, str(tmp_path / "ws"))
    again = llmkit.data.prepare(cfg, tmp_path / "ws")
    assert again.existed and again.id == first.id and first.path.parent.parent == (tmp_path / "ws").resolve()
    ws = Workspace.open(tmp_path / "ws")
    assert Workspace.open(ws) is ws
    with pytest.raises(UserError, match="a workspace is a folder .* not int"):
        Workspace.open(3)


def test_a_model_is_a_name_a_path_or_what_a_stage_returned_wherever_one_goes(lm_workspace: Path, tiny_model, monkeypatch):
    """A Path was an SQL error ('type PosixPath is not supported'), None an AttributeError ('rpartition');
    `SftConfig(base=model)` and `ServeConfig(models=[model])` refused the Model the README says every stage takes;
    `compare("tiny-lm", ...)` compared the models 't', 'i', 'n', ... and `load_causal_lm("tiny-lm")` was an
    AttributeError."""
    from llmkit.config import ServeConfig, SftConfig
    from llmkit.errors import UserError
    from llmkit.eval import compare
    from llmkit.generate import generate
    from llmkit.models.io import Model, load_causal_lm

    monkeypatch.setenv("LLMKIT_HOME", str(lm_workspace))
    assert resolve_model(tiny_model.path).path == tiny_model.path
    for bad in (None, 3):
        with pytest.raises(UserError, match=f"a model is named by .* not {type(bad).__name__}"):
            resolve_model(bad)
    assert SftConfig(base=tiny_model).base == tiny_model.ref == "tiny-lm:v1"
    assert ServeConfig(models=[tiny_model]).models == ["tiny-lm:v1"]
    folder_only = Model(tiny_model.path, tiny_model.path.name)
    assert SftConfig(base=folder_only).base == str(tiny_model.path)
    assert compare("tiny-lm", "tiny", split="val")["models"] == ["tiny-lm:v1"]
    lm, tokenizer = load_causal_lm("tiny-lm")
    assert generate(lm, tokenizer, "ROMEO:", max_new_tokens=3, temperature=0).token_ids
    with pytest.raises(UserError, match=r"generate takes the loaded model .*load_causal_lm\('tiny-lm'\)"):
        generate("tiny-lm", tokenizer, "ROMEO:")
    with pytest.raises(UserError, match="prompt is text"):
        generate(lm, tokenizer, ["ROMEO:"])


def test_one_text_given_to_predict_is_one_prediction_not_one_per_character(tmp_path: Path, monkeypatch):
    """And a classifier's Model given to bias_audit: "expected str, bytes or os.PathLike object, not Model"."""
    from transformers import LlamaForSequenceClassification

    from llmkit.audit import bias_audit
    from llmkit.config import BiasAuditConfig
    from llmkit.errors import UserError
    from llmkit.explain import explain
    from llmkit.models.presets import llama_config
    from llmkit.predict import predict
    from tests import tiny_lm

    tokenizer = tiny_lm.char_tokenizer()
    config = llama_config("nano", len(tokenizer), 32, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                          overrides=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1))
    config.id2label, config.label2id = {0: "ham", 1: "spam"}, {"ham": 0, "spam": 1}
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    out = predict(tmp_path / "clf", "the cat sat")
    assert len(out) == 1 and out[0]["text"] == "the cat sat" and out[0]["label"] in ("ham", "spam")
    with pytest.raises(UserError, match="predict takes texts .* not int"):
        predict(tmp_path / "clf", ["the cat", 3])
    with pytest.raises(UserError, match="explain takes one text .* not list"):
        explain(tmp_path / "clf", ["the cat", "the dog"])
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path / "ws"))
    report = bias_audit(resolve_model(tmp_path / "clf"), BiasAuditConfig(groups=["gender"], max_length=16))
    assert report.model and type(report).__name__ == "BiasReport"
