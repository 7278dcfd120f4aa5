"""model_kind: one vocabulary for what a model is, from lineage, config architectures or an export's file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmkit.errors import UserError
from llmkit.models.io import Model, resolve_model
from llmkit.models.kind import TASK_OF_KIND, model_kind
from llmkit.registry import Registry


def test_trained_models_builtins_and_bare_folders_get_their_kind(lm_workspace: Path, tiny_model, sms_classifier,
                                                                  tmp_path: Path):
    registry = Registry.for_workspace(lm_workspace)
    lm = resolve_model("tiny-lm", registry)
    clf = resolve_model(sms_classifier.name, registry)
    assert (model_kind(lm), model_kind(clf)) == ("causal", "classifier")
    assert model_kind(resolve_model("minilm-l6")) == "encoder"  # a BertModel: hidden states only
    assert TASK_OF_KIND == {"causal": "causal-lm", "classifier": "classification"}

    # Without lineage the config's architectures decide; a GGUF export is causal by its file.
    bare = tmp_path / "bare"
    shutil.copytree(lm.path, bare)
    (bare / "llmkit.json").unlink()
    assert model_kind(Model(bare, "bare")) == "causal"
    config = json.loads((bare / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    assert model_kind(Model(bare, "bare")) == "classifier"
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "llmkit.json").write_text(json.dumps({"gguf": "model.gguf"}))
    assert model_kind(Model(gguf, "gguf")) == "causal"
    # No config.json: nothing says what it is ("encoder" was a guess: a Hub id offline was "an encoder without a
    # language-model head")
    with pytest.raises(UserError, match="no config.json in .* to tell what kind of model it is"):
        model_kind(Model(tmp_path / "empty", "empty"))
