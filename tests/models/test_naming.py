"""A model a stage makes may not take a built-in model's name: registered as `smollm2-135m`, `show smollm2-135m`
read it while every other command read the name as the built-in (import, quantize, prune and export refused it; the
trainers and merge did not)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.conftest import tiny_config

from llmkit.config import SftConfig
from llmkit.errors import UserError
from llmkit.models.naming import output_name
from llmkit.registry import Registry
from llmkit.train import pretrain, sft
from llmkit.train.lora import merge
from llmkit.workspace import Workspace


def test_output_name_refuses_the_built_in_names_and_keeps_the_rest():
    assert output_name("sft", None, "tiny-lm-chats-sft") == "tiny-lm-chats-sft"
    assert output_name("sft", "my-smol", "x") == "my-smol"
    for builtin in ("smollm2-135m", "minilm-l6"):
        with pytest.raises(UserError, match=rf"sft.name = '{builtin}' is a built-in model's name .*choose another --name"):
            output_name("sft", builtin, "x")


def test_trainers_and_merge_refuse_a_built_in_name_before_they_register_anything(lm_workspace: Path, tiny_model,
                                                                                 chat_data: str):
    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    before = {r.id for r in registry.list()}
    with pytest.raises(UserError, match=r"pretrain.name = 'smollm2-135m' is a built-in model's name"):
        pretrain(tiny_config(name="smollm2-135m", max_steps=2), ws, registry)
    with pytest.raises(UserError, match=r"sft.name = 'minilm-l6' is a built-in model's name"):
        sft(SftConfig(base="tiny-lm", data=chat_data, name="minilm-l6", max_steps=1), ws, registry)
    with pytest.raises(UserError, match=r"merge.name = 'smollm2-135m'"):
        merge("tiny-lm", ws, registry, name="smollm2-135m")
    assert {r.id for r in registry.list()} == before
