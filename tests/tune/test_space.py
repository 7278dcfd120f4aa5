"""Search spaces: the YAML forms read into Optuna distributions, and every mistake one line before any trial."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from llmkit.config import ClassifyConfig, TuneConfig, render_defaults
from llmkit.errors import UserError
from llmkit.tune.space import read_space, start_values, with_values


def test_each_kind_becomes_its_optuna_distribution(tmp_path: Path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {log-float: [1.0e-5, 1.0e-3]}\nwarmup_ratio: {float: [0.0, 0.2], step: 0.05}\n"
                    "epochs: {int: [1, 4]}\nbatch_size: {categorical: [8, 16]}\nlora.r: {categorical: [4, 8]}\n")
    params = read_space(path, "classify")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    values = {p.key: p.suggest(trial) for p in params}
    d = trial.distributions
    assert d["lr"] == optuna.distributions.FloatDistribution(1e-5, 1e-3, log=True)
    assert d["warmup_ratio"] == optuna.distributions.FloatDistribution(0.0, 0.2, step=0.05)
    assert d["epochs"] == optuna.distributions.IntDistribution(1, 4)
    assert d["batch_size"] == optuna.distributions.CategoricalDistribution([8, 16])
    assert with_values({"lora": {"alpha": 16.0}}, {"lora.r": values["lora.r"]}) == {"lora": {"alpha": 16.0, "r": values["lora.r"]}}


@pytest.mark.parametrize(("space", "says"), [
    ({"lrr": {"float": [0.1, 0.2]}}, "unknown classify key 'lrr' (did you mean 'lr'?)"),
    ({"lora.rr": {"int": [1, 8]}}, "unknown classify key 'lora.rr' (did you mean 'lora.r'?)"),
    ({"lr": {"float": [0.01, 0.001]}}, "the range [0.01, 0.001] is empty"),
    ({"lr": {"float": [0.01, 0.01]}}, "is empty"),
    ({"epochs": {"int": [3, 2]}}, "the range [3, 2] is empty"),
    ({"batch_size": {"categorical": []}}, "non-empty list of choices"),
    ({"lr": {"log-float": [0.0, 0.1]}}, "log-float needs low > 0"),
    ({"lr": {"float": [0.1, 2.0]}}, "lr = 2.0 is not a valid classify value"),
    ({"lr": {"uniform": [0.1, 0.2]}}, "give one of float, log-float, int, categorical"),
    ({"lora": {"int": [1, 8]}}, "'lora' is a group of keys"),
    ({"name": {"categorical": ["a", "b"]}}, None),  # refused by tune (set per trial), not by the space reader
], ids=lambda v: str(v)[:40])
def test_a_bad_space_is_one_line_naming_the_key(space: dict, says: str | None):
    if says is None:
        assert read_space(space, "classify")
        return
    with pytest.raises(UserError) as err:
        read_space(space, "classify")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_exponents_without_a_dot_are_numbers(tmp_path: Path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {log-float: [1e-5, 3E-4]}\n")  # YAML 1.1 reads these as text
    (param,) = read_space(path, "classify")
    assert (param.low, param.high) == (1e-5, 3e-4)
    with pytest.raises(UserError, match=r"needs \[low, high\] as two numbers, got \['a', 5\]"):
        read_space({"lr": {"float": ["a", 5]}}, "classify")


def test_the_models_llama_fields_are_keys_a_space_can_search():
    for space in ({"model.num_hidden_layers": {"int": [1, 3]}}, {"model": {"num_hidden_layers": {"int": [1, 3]}}}):
        (param,) = read_space(space, "pretrain")
        assert (param.key, param.low, param.high) == ("model.num_hidden_layers", 1, 3)
    with pytest.raises(UserError, match=r"unknown key 'pretrain.model.num_hidden_layrs' \(did you mean "
                                        r"'num_hidden_layers'\?\)") as info:
        read_space({"model.num_hidden_layrs": {"int": [1, 3]}}, "pretrain")
    assert "narrow the range" not in str(info.value)


def test_a_space_file_that_is_not_yaml_or_absent_is_named(tmp_path: Path):
    with pytest.raises(UserError, match="file not found"):
        read_space(tmp_path / "nope.yaml", "pretrain")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: {float: [0.1, 0.2\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: invalid YAML"):
        read_space(bad, "pretrain")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"# caf\xe9\nlr: {float: [0.1, 0.2]}\n")
    with pytest.raises(UserError, match=r"latin.yaml: not UTF-8 text at byte 5; save it as UTF-8"):
        read_space(latin, "pretrain")


def test_default_spaces_are_valid_and_shown_by_config_show():
    spaces = TuneConfig().spaces.model_dump()
    assert [p.key for p in read_space(None, "sft", spaces)] == ["lr", "lora.r", "lora.alpha", "warmup_ratio", "epochs"]
    for stage in ("pretrain", "classify"):
        assert [p.key for p in read_space(None, stage, spaces)] == list(spaces[stage])
    shown = render_defaults("tune")
    assert "  classify:\n" in shown and "      lr: {log-float: [1.0e-05, 0.0003]}" in shown


def test_nested_groups_read_as_dotted_keys():
    params = read_space({"lora": {"r": {"int": [4, 16]}, "alpha": {"float": [8.0, 32.0]}}}, "sft")
    assert [(p.key, p.kind) for p in params] == [("lora.r", "int"), ("lora.alpha", "float")]


def test_start_values_are_the_given_config_values_the_space_can_draw():
    params = read_space({"lr": {"log-float": [1e-5, 3e-4]}, "epochs": {"int": [1, 3]}, "batch_size": {"categorical": [8, 32]},
                         "warmup_ratio": {"float": [0.0, 0.2], "step": 0.05}}, "classify")
    body = ClassifyConfig().model_dump()  # lr 5e-5, epochs 3.0 (a float field), batch_size 16, warmup_ratio 0.06
    assert start_values(params, body) == {"lr": 5e-5, "epochs": 3}  # 16 is no choice, 0.06 is off the 0.05 grid
    assert type(start_values(params, body)["epochs"]) is int
    stepped = read_space({"epochs": {"int": [2, 6], "step": 2}, "lora.r": {"int": [2, 18], "step": 2}}, "classify")
    assert start_values(stepped, body) == {"lora.r": body["lora"]["r"]}  # epochs 3 is off the grid 2, 4, 6
    assert body["lora"]["r"] % 2 == 0
    nested = read_space({"lora": {"r": {"int": [4, 16]}}}, "classify")
    assert start_values(nested, body) == {"lora.r": body["lora"]["r"]}
