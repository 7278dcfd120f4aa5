"""Stage configs: defaults < file < flags, and mistakes reported as one line naming the key path."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from llmkit.config import SECTIONS, load_section, read_config_file, render_defaults
from llmkit.errors import UserError

WriteConfig = Callable[[str], Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    def write(text: str) -> Path:
        path = tmp_path / "llmkit.yaml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def _error(section: str, path: Path | None = None, overrides: dict | None = None) -> str:
    with pytest.raises(UserError) as err:
        load_section(section, path, overrides)
    return str(err.value)


def test_without_file_or_flags_a_section_is_its_defaults() -> None:
    assert load_section("pretrain") == SECTIONS["pretrain"]()


def test_flags_win_over_the_file_and_the_file_over_defaults(write_config: WriteConfig) -> None:
    path = write_config("pretrain:\n  lr: 0.01\n  batch_size: 4\ngenerate:\n  top_k: 5\n")
    cfg = load_section("pretrain", path, overrides={"lr": 0.02, "batch_size": None, "max_steps": None})

    assert cfg.lr == 0.02  # flag over file
    assert cfg.batch_size == 4  # file over default; a None flag means "not given"
    assert cfg.max_steps == SECTIONS["pretrain"]().max_steps  # default
    assert load_section("generate", path).top_k == 5


def test_a_bad_value_is_blamed_on_the_file_only_when_it_came_from_the_file(write_config: WriteConfig) -> None:
    bad = write_config("pretrain:\n  lr: -1\n")
    assert _error("pretrain", bad).startswith(f"{bad}:2: pretrain.lr = -1")
    path = write_config("pretrain:\n  lr: 0.1\n  batch_size: 4\nsft:\n  lora: {r: 8}\n")
    flag = _error("pretrain", path, {"lr": 0.01, "max_steps": -5})
    assert flag.startswith("pretrain.max_steps = -5") and str(path) not in flag  # it said "llmkit.yaml: pretrain.max_steps"
    assert not _error("sft", path, {"lora": {"r": -1}}).startswith(str(path))


def test_nested_keys_come_from_the_file(write_config: WriteConfig) -> None:
    path = write_config("data:\n  splits:\n    val: 0.2\n")
    cfg = load_section("data", path)
    assert (cfg.splits.val, cfg.splits.test) == (0.2, SECTIONS["data"]().splits.test)


def test_a_wrong_type_in_the_file_names_the_key_path_and_the_value(write_config: WriteConfig) -> None:
    path = write_config("pretrain:\n  lr: fast\n")
    message = _error("pretrain", path)
    assert message.startswith(f"{path}:2: pretrain.lr = 'fast'")


def test_a_wrong_type_in_a_flag_names_the_key_path_and_the_value() -> None:
    assert "pretrain.batch_size = 'many'" in _error("pretrain", overrides={"batch_size": "many"})


def test_an_out_of_range_nested_value_names_the_full_key_path(write_config: WriteConfig) -> None:
    path = write_config("data:\n  splits:\n    val: 2\n")
    assert "data.splits.val = 2" in _error("data", path)


def test_splits_that_leave_no_room_for_train_are_one_line_in_our_words(write_config: WriteConfig) -> None:
    path = write_config("data:\n  splits: {val: 0.6, test: 0.5}\n")
    message = _error("data", path)
    assert message.startswith(f"{path}:2: data.splits = ") and "val + test = 1.1: together they must stay below 1" in message
    assert "Value error" not in message


def test_one_input_may_be_written_without_a_list(write_config: WriteConfig) -> None:
    path = write_config("data:\n  inputs: corpus.txt\n  exclude: '*.md'\n")
    cfg = load_section("data", path)
    assert (cfg.inputs, cfg.exclude) == (["corpus.txt"], ["*.md"])


def test_an_unknown_key_names_the_key_path_and_suggests_the_right_one(write_config: WriteConfig) -> None:
    message = _error("pretrain", write_config("pretrain:\n  lrr: 0.1\n"))
    assert "unknown key 'pretrain.lrr'" in message and "did you mean 'lr'?" in message


def test_an_unknown_nested_key_suggests_a_key_of_the_nested_section(write_config: WriteConfig) -> None:
    message = _error("data", write_config("data:\n  splits:\n    vall: 0.1\n"))
    assert "unknown key 'data.splits.vall'" in message and "did you mean 'val'?" in message


def test_an_unknown_flag_is_reported_like_an_unknown_key() -> None:
    message = _error("pretrain", overrides={"max_step": 3})
    assert "unknown key 'pretrain.max_step'" in message and "did you mean 'max_steps'?" in message


def test_a_mistake_in_another_section_of_the_file_is_still_reported(write_config: WriteConfig) -> None:
    path = write_config("pretrain:\n  lr: 0.01\ngenerate:\n  temprature: 0.5\n")
    message = _error("pretrain", path)
    assert "unknown key 'generate.temprature'" in message and "did you mean 'temperature'?" in message


def test_an_unknown_section_is_reported_with_a_suggestion(write_config: WriteConfig) -> None:
    path = write_config("pretrian:\n  lr: 0.1\n")
    assert f"{path}:1: unknown section 'pretrian' (did you mean 'pretrain'?)" in _error("pretrain", path)


def test_a_mistake_names_the_file_and_the_line_of_its_key(write_config: WriteConfig) -> None:
    path = write_config("pretrain:\n  lr: 0.1\n\nsft:\n  max_steps: 3\n  lora:\n    alpha: 16\n    rr: 3\n")
    assert _error("sft", path).startswith(f"{path}:8: unknown key 'sft.lora.rr'")
    # a value in a list: the line of the item; a key under an old section name: its line in the file
    assert _error("data", write_config("data:\n  inputs:\n    - a.txt\n    - 3\n")).startswith(f"{path}:4: data.inputs.1 = 3")
    assert _error("pretrain", write_config("train:\n\n  max_steps: many\n")).startswith(f"{path}:3: pretrain.max_steps")
    # a flag's mistake is not the file's, whatever line the file gives the same key
    assert _error("pretrain", write_config("pretrain:\n  lr: 0.1\n"), {"lr": -1}).startswith("pretrain.lr = -1")


def test_invalid_yaml_is_reported_as_file_line_column(write_config: WriteConfig) -> None:
    path = write_config("pretrain:\n  lr: 0.1\n   max_steps: 10\n")
    assert _error("pretrain", path).startswith(f"{path}:3:13: invalid YAML (")


def test_a_file_that_is_not_a_mapping_is_reported(write_config: WriteConfig) -> None:
    path = write_config("- pretrain\n- data\n")
    message = _error("pretrain", path)
    assert message.startswith(f"{path}: a config file is a mapping of sections") and "not list" in message


def test_a_section_that_is_not_a_mapping_is_reported(write_config: WriteConfig) -> None:
    path = write_config("pretrain: 5\n")
    assert f"{path}:1: section 'pretrain' must be a mapping of keys, not int" in _error("pretrain", path)


def test_a_missing_config_file_is_reported(tmp_path: Path) -> None:
    assert "config file not found" in _error("pretrain", tmp_path / "nope.yaml")


def test_an_empty_file_or_an_empty_section_means_defaults(write_config: WriteConfig) -> None:
    assert read_config_file(write_config("")) == {}
    assert load_section("pretrain", write_config("pretrain:\n")) == SECTIONS["pretrain"]()


@pytest.mark.parametrize("section", list(SECTIONS))
def test_rendered_defaults_are_valid_yaml_equal_to_the_defaults(section: str) -> None:
    text = render_defaults(section)
    assert yaml.safe_load(text) == {section: SECTIONS[section]().model_dump()}


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_rendered_key_has_a_comment_line_above_it(section: str) -> None:
    lines = render_defaults(section).splitlines()
    key_lines = [i for i, line in enumerate(lines) if re.match(r"\s+[A-Za-z_]\w*:", line)]
    assert key_lines, "no keys rendered"
    for i in key_lines:
        above = lines[i - 1].strip()
        assert above.startswith("# ") and not above.startswith("# None"), f"no comment above {lines[i]!r}"


def test_a_rendered_config_file_loads_back_to_the_defaults(write_config: WriteConfig) -> None:
    path = write_config(render_defaults("pretrain"))
    assert load_section("pretrain", path) == SECTIONS["pretrain"]()


def test_rendering_an_unknown_stage_suggests_the_right_one() -> None:
    with pytest.raises(UserError, match=r"unknown stage 'pretrian' \(did you mean 'pretrain'\?\)"):
        render_defaults("pretrian")


def test_an_old_section_name_still_works_with_one_warning_naming_the_new_one(write_config: WriteConfig, capsys) -> None:
    path = write_config("train:\n  lr: 0.02\nbench:\n  runs: 2\n")
    assert load_section("pretrain", path).lr == 0.02 and load_section("bench-model", path).runs == 2
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {path}: section 'train' is now 'pretrain' (sections are named after their commands); rename it",
                        f"warning: {path}: section 'bench' is now 'bench-model' (sections are named after their commands); rename it"]
    both = write_config("train:\n  lr: 0.02\npretrain:\n  lr: 0.03\n")
    assert f"{both}: sections 'train' and 'pretrain' are the same section" in _error("pretrain", both)


def test_compile_is_true_false_or_auto_and_anything_else_is_named(write_config: WriteConfig) -> None:
    assert load_section("sft", None, {}).compile == "auto"
    for text, want in (("true", True), ("false", False), ("auto", "auto")):
        assert load_section("sft", write_config(f"sft:\n  compile: {text}\n"), {}).compile == want
    path = write_config("sft:\n  compile: sometimes\n")
    assert _error("sft", path) == (f"{path}:2: sft.compile = 'sometimes': Input should be a valid boolean, unable to "
                                   "interpret input or Input should be 'auto'")


def test_a_mistake_assigned_in_python_is_the_same_one_line() -> None:
    from llmkit.config import SftConfig

    cfg = SftConfig(base="smollm2-135m", data="chats")
    with pytest.raises(UserError, match=r"^SftConfig.lr = 'abc': Input should be a valid number"):
        cfg.lr = "abc"
    with pytest.raises(UserError, match=r"^unknown key 'SftConfig.lrr' \(did you mean 'lr'\?\)"):
        cfg.lrr = 0.1
    with pytest.raises(UserError, match=r"^LoraConfig.r = -1"):
        cfg.lora.r = -1
    cfg.lr, cfg.base = 0.1, Path("/models/base")  # a good value, and a Path as the text a file would hold
    assert (cfg.lr, cfg.base, cfg.lora.r) == (0.1, "/models/base", SftConfig().lora.r)
