"""Model aliases on SQLite and PostgreSQL: resolution, moves with their history, and the names an alias may not take."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmkit.errors import UserError
from llmkit.models.aliases import current, history, move_alias
from llmkit.models.io import BUILTIN_MODELS, resolve_model
from llmkit.registry import Registry


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    reg = Registry(registry_url)
    yield reg
    reg.close()


def _model(registry: Registry, root: Path, name: str):
    folder = root / f"{name}-{len(registry.list('model'))}"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return registry.add("model", name, kind="llama", path=folder)


def test_an_alias_resolves_to_where_its_last_move_put_it_and_keeps_every_move(registry: Registry, tmp_path: Path,
                                                                              monkeypatch) -> None:
    base, tuned = _model(registry, tmp_path, "base"), _model(registry, tmp_path, "tuned")
    monkeypatch.setenv("LLMKIT_USER", "ci-job")
    first, moved = move_alias(registry, "prod", "base", note="first release")
    assert moved and (first.model_id, first.previous_id, first.moved_by) == (base.id, None, "ci-job")
    model = resolve_model("prod", registry)
    assert (model.id, model.name, model.alias, model.path) == (base.id, "base", "prod", Path(base.path))

    second, moved = move_alias(registry, "prod", "tuned:v1", who="alice")
    assert moved and (second.previous_id, second.previous_ref, second.model_ref) == (base.id, "base:v1", "tuned:v1")
    assert resolve_model("prod", registry).id == tuned.id
    again, moved = move_alias(registry, "prod", tuned.id)  # already there: nothing recorded
    assert not moved and again.seq == second.seq

    move_alias(registry, "staging", "prod")  # an alias may be given as the model: what it points at
    assert resolve_model("staging", registry).id == tuned.id
    moves = history(registry, "prod")
    assert [(m.previous_ref, m.model_ref, m.moved_by, m.note) for m in moves] == [
        (None, "base:v1", "ci-job", "first release"), ("base:v1", "tuned:v1", "alice", "")]
    assert moves[0].moved_at <= moves[1].moved_at
    assert {name: m.model_id for name, m in current(registry).items()} == {"prod": tuned.id, "staging": tuned.id}
    assert resolve_model("base", registry).alias is None  # a model name is not an alias


def test_an_alias_never_shadows_a_model_or_takes_a_bad_name(registry: Registry, tmp_path: Path) -> None:
    _model(registry, tmp_path, "base")
    with pytest.raises(UserError, match=r"^alias 'base' would shadow the model base:v1; an alias needs a name no model has$"):
        move_alias(registry, "base", "base")
    with pytest.raises(UserError, match="would shadow the built-in model smollm2-135m"):
        move_alias(registry, "smollm2-135m", "base", builtins=BUILTIN_MODELS)
    with pytest.raises(UserError, match=r"alias name 'prod/x': use ASCII letters"):
        move_alias(registry, "prod/x", "base")
    with pytest.raises(UserError, match=r"^no model 'nope' in the registry; an alias points at a registered model"):
        move_alias(registry, "prod", "nope")
    assert history(registry) == []  # nothing written by a refused move


def test_a_model_registered_under_an_alias_name_or_a_removed_target_is_one_clear_line(registry: Registry,
                                                                                       tmp_path: Path) -> None:
    base = _model(registry, tmp_path, "base")
    move_alias(registry, "prod", "base")
    clash = _model(registry, tmp_path, "prod")  # registered after the alias: neither silently wins
    with pytest.raises(UserError, match=r"'prod' is both an alias \(-> base:v1\) and a model \(prod:v1\): say prod:v1"):
        resolve_model("prod", registry)
    assert resolve_model("prod:v1", registry).id == clash.id
    registry.remove(clash.id)
    registry.remove(base.id)
    with pytest.raises(UserError, match=rf"alias 'prod' points at base:v1 \({base.id}\), which was removed; move it"):
        resolve_model("prod", registry)


def test_a_version_that_does_not_exist_lists_the_ones_that_do(registry: Registry, tmp_path: Path) -> None:
    _model(registry, tmp_path, "nano")
    _model(registry, tmp_path, "nano")
    assert resolve_model("nano:v2", registry).version == 2
    with pytest.raises(UserError, match=r"^no model 'nano:v7': nano has versions v1, v2$"):  # it said "did you mean 'nano'"
        resolve_model("nano:v7", registry)
    # promote said "no model 'nano:v7' in the registry" where every other command lists the versions; a dataset's
    # name was "no model" without a word of what it is
    with pytest.raises(UserError, match=r"^no model 'nano:v7' in the registry: nano has versions v1, v2; an alias points"):
        move_alias(registry, "prod", "nano:v7")
    registry.add("dataset", "chats", kind="chat", path=tmp_path)
    with pytest.raises(UserError, match=r"^no model 'chats' in the registry \(chats:v1 is a dataset\); an alias points"):
        move_alias(registry, "prod", "chats")
    assert history(registry) == []
