"""Flags derived from the config sections (llmkit.cli.options): one option per key, with the key's type,
choices and help, laid over the config file key by key (nested sections too)."""

from __future__ import annotations

import typing

import pytest
import typer
import yaml
from pydantic import BaseModel
from rich.markup import escape
from typer.testing import CliRunner

from llmkit.cli.common import Ctx
from llmkit.cli.options import configured
from llmkit.config import SECTIONS
from llmkit.errors import UserError

runner = CliRunner()


def _app(section: str, **options) -> tuple[typer.Typer, list]:
    seen: list = []
    app = typer.Typer()

    @app.command()
    @configured(section, **options)
    def cmd(ctx: Ctx, cfg, extra: typing.Annotated[str, typer.Option(help="An option of the command's own.")] = "x") -> None:
        seen.append((ctx, cfg, extra))

    @app.command()
    def other() -> None:  # a second command keeps typer from folding `cmd` into the app itself
        pass

    return app, seen


def test_flags_lay_over_the_config_file_key_by_key(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"sft": {"lr": 0.01, "epochs": 2, "lora": {"alpha": 32, "r": 4}}}))
    app, seen = _app("sft", flags={"lora.target_modules": ("--target-modules",)})
    res = runner.invoke(app, ["cmd", "--config", str(cfg_file), "--lora-r", "16", "--target-modules", "q_proj, v_proj",
                              "--packing", "--extra", "y", "--json"])
    assert res.exit_code == 0, res.output
    ctx, cfg, extra = seen[0]
    assert (cfg.lr, cfg.epochs) == (0.01, 2)  # from the file
    assert (cfg.lora.r, cfg.lora.alpha) == (16, 32)  # the flag wins, the file's other nested key stays
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.packing is True and extra == "y" and ctx.json is True
    assert ctx.given == {"lora": {"r": 16, "target_modules": ["q_proj", "v_proj"]}, "packing": True}


def test_bools_negate_lists_repeat_and_arguments_are_positional():
    app, seen = _app("serve", arguments=("models",), required=("models",), repeat=("api_keys",),
                     flags={"api_keys": ("--api-key",)}, json=False)
    res = runner.invoke(app, ["cmd", "a", "b", "--no-ui", "--api-key", "k1,with,commas", "--api-key", "k2", "--port", "0"])
    assert res.exit_code == 0, res.output
    _, cfg, _ = seen[0]
    assert cfg.models == ["a", "b"] and cfg.ui is False and cfg.port == 0
    assert cfg.api_keys == ["k1,with,commas", "k2"]  # a repeated flag is never split on commas
    assert runner.invoke(app, ["cmd", "--port", "1"]).exit_code == 2  # the required argument is missing
    assert runner.invoke(app, ["cmd", "a", "--json"]).exit_code == 2  # json=False: no --json


def test_a_bad_value_names_the_config_key():
    app, _ = _app("pretrain")
    res = runner.invoke(app, ["cmd", "--lr", "5"])
    assert isinstance(res.exception, UserError)
    assert "pretrain.lr" in str(res.exception)
    res = runner.invoke(app, ["cmd", "--max-steps", "abc"])
    assert res.exit_code == 2  # a value of the wrong type is a usage error


def _leaf_keys(model, prefix=()):
    for key, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _leaf_keys(kind, (*prefix, key))
        elif typing.get_origin(kind) is not dict:
            yield (*prefix, key), field


@pytest.mark.parametrize("section", sorted(set(SECTIONS) - {"workspace"}))
def test_every_key_of_a_section_is_an_option_with_its_description(section):
    app, _ = _app(section)
    command = typer.main.get_command(app).commands["cmd"]
    options = {p.name: p for p in command.params}
    for path, field in _leaf_keys(SECTIONS[section]):
        param = options["_".join(path)]
        # help is rich markup: the description escaped, so that it renders as written ('[q_proj, v_proj]' and all)
        assert param.help.startswith(escape(field.description)), (section, path)
        choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
        for choice in choices:
            assert choice in (param.metavar or ""), (section, path, choice)
    assert "extra" in options and "config" in options and "json_out" in options
