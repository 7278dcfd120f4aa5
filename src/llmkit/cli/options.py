"""Command options derived from the config sections: every key of a command's section is a flag, with
its type, choices and help taken from the pydantic field, so each is written once (in llmkit.config).

A command is written as `def cmd(ctx: Ctx, cfg: XConfig, *, own_arg: ...)`; `@configured("x")` gives typer
a signature made of the command's own parameters, one option per section key and the common options, and
calls the command with the validated section (defaults < config file < flags given)."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from rich.markup import escape

from llmkit.cli.common import ConfigOpt, Ctx, DbUrlOpt, JsonOpt, WorkspaceOpt

_COMMON = {"config": ConfigOpt, "workspace": WorkspaceOpt, "db_url": DbUrlOpt, "json_out": JsonOpt}


def configured(section: str | None, *, arguments: tuple[str, ...] = (), required: tuple[str, ...] = (),
               repeat: tuple[str, ...] = (), flags: dict[str, tuple[str, ...]] | None = None,
               skip: tuple[str, ...] = (), json: bool = True):
    """Derive `section`'s flags for the decorated command (None: a command without a section gets the
    common options and is called with `ctx` alone).

    arguments: keys taken as positional arguments (those in `required` must be given); repeat: list keys
    given by repeating the flag (others take one comma-separated value); flags: other option names for a
    key (dotted for a nested section: "lora.target_modules"); skip: keys left to the config file."""
    from llmkit.config import SECTIONS

    names = flags or {}

    def decorate(command):
        own = list(inspect.signature(command, eval_str=True).parameters.values())[2 if section else 1:]  # after (ctx[, cfg])
        derived = list(_section_params(SECTIONS[section], (), arguments, required, repeat, names, skip)) if section else []
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        params += [d.param for d in derived]
        params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a, default=False if n == "json_out" else None)
                   for n, a in _COMMON.items() if json or n != "json_out"]

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            ctx = Ctx(kwargs.pop("config"), kwargs.pop("workspace"), kwargs.pop("db_url"), kwargs.pop("json_out", False))
            given: dict[str, Any] = {}
            for d in derived:
                value = d.convert(kwargs.pop(d.param.name))
                if value is not None:
                    _put(given, d.path, value)
            ctx.given = given
            if section is None:
                return command(ctx, **kwargs)
            return command(ctx, ctx.section(section, **given), **kwargs)

        del run.__wrapped__  # typer must read the signature below, not the command's
        run.__signature__ = inspect.Signature(params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate


class _Derived(typing.NamedTuple):
    param: inspect.Parameter
    path: tuple[str, ...]
    convert: Any


def _section_params(model: type[BaseModel], prefix: tuple[str, ...], arguments, required, repeat, names, skip):
    for key, field in model.model_fields.items():
        path = (*prefix, key)
        dotted = ".".join(path)
        if dotted in skip:
            continue
        kind = _plain(field.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _section_params(kind, path, arguments, required, repeat, names, skip)
            continue
        help_text = _help(field.description)
        name = "_".join(path)
        if typing.get_origin(kind) is dict:
            continue  # a mapping has no flag spelling; it is set in the config file
        if typing.get_origin(kind) is list:
            if dotted in arguments:
                info = typer.Argument(help=help_text, show_default=False)
                default = ... if dotted in required else None
                yield _Derived(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                                 annotation=Annotated[list[str] | None, info]), path, _list)
                continue
            if dotted in repeat:
                info = typer.Option(*names.get(dotted, ()), help=help_text + " Repeat the flag for several.", show_default=False)
                annotation, convert = list[str] | None, _list
            else:
                info = typer.Option(*names.get(dotted, ()), help=help_text + " Comma-separated.", show_default=False)
                annotation, convert = str | None, _commas
        elif kind is bool:
            flag = "-".join(path).replace("_", "-")
            decls = names.get(dotted) or (f"--{flag}/--no-{flag}",)
            info = typer.Option(*decls, help=help_text, show_default=False)
            annotation, convert = bool | None, _same
        else:
            choices = typing.get_args(kind) if typing.get_origin(kind) is Literal else ()
            metavar = "[" + "|".join(map(str, choices)) + "]" if choices else None
            info = typer.Option(*names.get(dotted, ()), help=help_text, metavar=metavar, show_default=False)
            annotation, convert = (str if choices else kind) | None, _same
        yield _Derived(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                         annotation=Annotated[annotation, info]), path, convert)


def _plain(annotation: Any) -> Any:
    """The type a flag parses: without Optional, Annotated validators and constrained-int wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation


def _help(description: str | None) -> str:
    # escaped: help is rich markup, and a description's '[q_proj, v_proj]' read as a tag vanished from --help
    text = escape(description or "")
    return text + ("" if text.endswith(".") else ".")


def _same(value: Any) -> Any:
    return value


def _list(values: list[str] | None) -> list[str] | None:
    return list(values) if values else None


def _commas(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _put(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value
