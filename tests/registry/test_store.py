"""The registry on SQLite and PostgreSQL: lookups, versions, lineage, migrations, concurrent writers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from llmkit.errors import UserError
from llmkit.registry import SCHEMA_VERSION, Registry, check_name, default_name, lineage


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    reg = Registry(registry_url)
    yield reg
    reg.close()


def test_a_new_registry_is_at_the_latest_schema_version(registry: Registry) -> None:
    assert registry.schema_version() == SCHEMA_VERSION


def test_a_record_is_found_by_id_id_prefix_name_and_version(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    folder.mkdir()
    first = registry.add("model", "tiny", kind="llama", path=folder, params={"preset": "nano"}, metrics={"loss": 3.5})
    second = registry.add("model", "tiny", kind="llama", params={"preset": "micro"})

    assert registry.get(first.id) == first
    assert registry.get(first.id[:6]) == first
    assert registry.get("tiny") == second  # a bare name means the latest version
    assert registry.get("tiny:v1") == first
    assert registry.get("tiny@1") == first
    assert registry.get("tiny@2") == second
    assert first.ref == "tiny:v1"
    assert (first.path, first.kind, first.params, first.metrics) == (str(folder), "llama", {"preset": "nano"}, {"loss": 3.5})
    assert registry.find("tiny:v3") is None
    assert registry.find("tiny", type="dataset") is None


def test_versions_count_up_per_name(registry: Registry) -> None:
    versions = [registry.add("dataset", name).version for name in ("a", "b", "a", "a", "b")]
    assert versions == [1, 1, 2, 3, 2]
    assert [r.version for r in registry.list(name="a")] == [1, 2, 3]


def test_a_name_shared_by_a_dataset_and_a_model_resolves_to_the_model(registry: Registry) -> None:
    registry.add("dataset", "shakespeare")
    model = registry.add("model", "shakespeare")
    assert registry.get("shakespeare") == model
    assert registry.get("shakespeare", type="dataset").type == "dataset"


def test_content_hash_finds_the_latest_record_with_that_content(registry: Registry) -> None:
    registry.add("dataset", "poems", content_hash="aaa")
    middle = registry.add("dataset", "poems", content_hash="bbb")
    latest = registry.add("dataset", "poems", content_hash="aaa")
    copy = registry.add("dataset", "poems-copy", content_hash="ccc")

    assert registry.find_by_hash("dataset", "aaa") == latest
    assert registry.find_by_hash("dataset", "bbb") == middle
    assert registry.find_by_hash("dataset", "ccc") == copy
    assert registry.find_by_hash("dataset", "ccc", name="poems") is None
    assert registry.find_by_hash("dataset", "ddd") is None
    assert registry.find_by_hash("model", "aaa") is None


def test_lineage_links_a_model_to_its_run_dataset_and_parent_model(registry: Registry) -> None:
    data = registry.add("dataset", "corpus")
    base = registry.add("model", "base")
    run = registry.add("run", "finetune-1", parents=[(data.id, "data")])
    model = registry.add("model", "tuned", parents=[(run.id, "run"), (base.id, "base")])

    assert sorted((rel, r.id) for rel, r in registry.parents(model.id)) == sorted([("run", run.id), ("base", base.id)])
    assert [(rel, r.id) for rel, r in registry.parents(run.id)] == [("data", data.id)]
    assert [(rel, r.id) for rel, r in registry.children(data.id)] == [("data", run.id)]
    assert [(rel, r.id) for rel, r in registry.children(run.id)] == [("run", model.id)]
    assert [(rel, r.id) for rel, r in registry.children(base.id)] == [("base", model.id)]
    assert registry.parents(data.id) == []


def test_update_metrics_merges_into_the_existing_metrics(registry: Registry) -> None:
    rec = registry.add("eval", "tiny-eval", metrics={"loss": 2.0, "ppl": 7.4})
    registry.update_metrics(rec.id, {"ppl": 6.9, "accuracy": 0.5})
    assert registry.get(rec.id).metrics == {"loss": 2.0, "ppl": 6.9, "accuracy": 0.5}


def test_remove_deletes_the_record_and_its_lineage(registry: Registry) -> None:
    data = registry.add("dataset", "corpus")
    run = registry.add("run", "r", parents=[(data.id, "data")])
    registry.remove(run.id)

    assert registry.find(run.id) is None
    assert registry.list(type="run") == []
    assert registry.children(data.id) == []
    assert registry.get("corpus") == data
    with registry.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(lineage)).scalar() == 0


def test_feedback_is_stored_and_listed_per_model(registry: Registry) -> None:
    fid = registry.add_feedback("tiny", response_id="r1", rating=1, prompt="hi", response="hello", extra={"ua": "x"})
    registry.add_feedback("other", rating=-1, correction="better answer")

    [row] = registry.list_feedback("tiny")
    assert (row["id"], row["rating"], row["prompt"], row["response"], row["extra"]) == (fid, 1, "hi", "hello", {"ua": "x"})
    assert [f["model"] for f in registry.list_feedback()] == ["tiny", "other"]
    assert [f["id"] for f in registry.list_feedback(response_id="r1")] == [fid]  # the server's lookup of one response
    assert registry.list_feedback(response_id="nope") == [] and registry.list_feedback("other", response_id="r1") == []


def test_getting_an_unknown_name_raises_a_user_error_listing_known_names(registry: Registry) -> None:
    registry.add("dataset", "alpha")
    registry.add("model", "beta")

    with pytest.raises(UserError) as err:
        registry.get("gamma")
    assert "'gamma'" in str(err.value) and "alpha" in str(err.value) and "beta" in str(err.value)

    with pytest.raises(UserError, match="no eval named 'beta'.*there are no evals yet"):
        registry.get("beta", type="eval")


def test_registering_a_path_that_does_not_exist_is_refused(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        registry.add("model", "ghost", path=tmp_path / "missing")
    assert registry.list() == []


BAD_NAMES = ["../../../outside", "../x", "/abs", "a/b", ".hidden", "", "x" * 101, "sp ace", "a\\b", "name:v2", "é", "诗歌"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_one_name_rule_refuses_what_could_leave_a_folder_or_need_quoting(bad: str) -> None:
    with pytest.raises(UserError, match=r"use ASCII letters \(a-z, A-Z\), digits"):
        check_name(bad, "model")


def test_a_registered_name_follows_the_rule_and_defaults_are_made_to(registry: Registry) -> None:
    for ok in ("tiny", "tiny-lm.v2", "A_1", "x" * 100):
        assert check_name(ok, "model") == ok
    for type in ("dataset", "run", "model"):
        with pytest.raises(UserError, match=f"{type} name '../x'"):
            registry.add(type, "../x")
    assert registry.list() == []
    registry.add("eval", "HuggingFaceTB/SmolLM-135M")  # an eval is named after the model it measured
    assert default_name("HuggingFaceTB/SmolLM 135M (copy)") == "HuggingFaceTB-SmolLM-135M-copy"
    assert default_name("../..") == "model" and check_name(default_name("诗经 tang"), "model") == "tang"


def test_records_sharing_a_folder_are_found_by_either(registry: Registry, tmp_path: Path) -> None:
    shared, own = tmp_path / "shared", tmp_path / "own"
    (shared / "inner").mkdir(parents=True)
    own.mkdir()
    v1, v2 = registry.add("model", "m", path=shared), registry.add("model", "m", path=shared)
    inner = registry.add("model", "n", path=shared / "inner")
    alone = registry.add("model", "o", path=own)
    assert {r.id for r in registry.sharing_files(v1)} == {v2.id, inner.id}
    assert {r.id for r in registry.sharing_files(inner)} == {v1.id, v2.id}
    assert registry.sharing_files(alone) == []


def test_opening_a_fresh_registry_many_times_in_one_process_works(registry_url: str, tmp_path: Path) -> None:
    # Regression: migration 2 used to attach a new Index object to the shared Table on every run, so
    # the third fresh database opened by one process failed with "index ix_records_hash already exists".
    urls = [f"sqlite:///{tmp_path / f'r{i}.db'}" for i in range(3)] + [registry_url] * 2
    for url in urls:
        reg = Registry(url)
        assert reg.schema_version() == SCHEMA_VERSION
        reg.add("dataset", "d")
        reg.close()


def test_a_sqlite_read_does_not_wait_for_a_writer_holding_the_lock(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    reg = Registry(f"sqlite:///{db}")
    data = reg.add("dataset", "corpus")
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE records SET kind = 'busy'")
    try:
        start = time.monotonic()
        assert reg.get("corpus").kind == data.kind  # the committed snapshot, not the writer's change
        assert time.monotonic() - start < 5
    finally:
        writer.execute("ROLLBACK")
        writer.close()
        reg.close()


# -- migrations --------------------------------------------------------------------------------------

V1_SCHEMA = [
    "CREATE TABLE llmkit_schema (version INTEGER NOT NULL)",
    """CREATE TABLE records (
        id VARCHAR(32) PRIMARY KEY, type VARCHAR(16) NOT NULL, name VARCHAR(200) NOT NULL,
        version INTEGER NOT NULL, kind VARCHAR(64) NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        path TEXT, content_hash VARCHAR(128), params TEXT NOT NULL, metrics TEXT NOT NULL,
        CONSTRAINT uq_records_type_name_version UNIQUE (type, name, version))""",
    """CREATE TABLE lineage (
        child_id VARCHAR(32) NOT NULL, parent_id VARCHAR(32) NOT NULL, relation VARCHAR(32) NOT NULL,
        PRIMARY KEY (child_id, parent_id, relation))""",
    "INSERT INTO llmkit_schema (version) VALUES (1)",
    """INSERT INTO records VALUES
        ('aaaaaaaa0001', 'dataset', 'corpus', 1, 'lm', 1700000000.0, NULL, 'h1', '{}', '{}'),
        ('aaaaaaaa0002', 'model', 'old-model', 1, 'llama', 1700000001.0, NULL, NULL,
         '{"preset": "nano"}', '{"val_loss": 2.5}')""",
    "INSERT INTO lineage VALUES ('aaaaaaaa0002', 'aaaaaaaa0001', 'data')",
]


def _execute_by_hand(url: str, statements: list[str]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    engine.dispose()


def test_a_v1_registry_is_migrated_on_open_and_keeps_its_records(registry_url: str, capsys) -> None:
    _execute_by_hand(registry_url, V1_SCHEMA)

    reg = Registry(registry_url)
    # a team's database is migrated in place for everyone: that is said (a workspace's own SQLite file quietly)
    said = capsys.readouterr().err
    if registry_url.startswith("postgresql"):
        assert f"from schema v1 to v{SCHEMA_VERSION}: llmkit older than this one cannot open it any more" in said
    else:
        assert said == ""
    try:
        assert reg.schema_version() == SCHEMA_VERSION
        old = reg.get("old-model")
        assert (old.id, old.version, old.kind, old.params, old.metrics) == (
            "aaaaaaaa0002", 1, "llama", {"preset": "nano"}, {"val_loss": 2.5})
        assert [(rel, r.name) for rel, r in reg.parents(old.id)] == [("data", "corpus")]
        assert reg.find_by_hash("dataset", "h1").name == "corpus"
        assert reg.add("model", "old-model").version == 2

        reg.add_feedback("old-model", rating=1)
        assert [f["rating"] for f in reg.list_feedback("old-model")] == [1]
        assert "ix_records_hash" in {ix["name"] for ix in sa.inspect(reg.engine).get_indexes("records")}
    finally:
        reg.close()

    again = Registry(registry_url)  # opening an up-to-date registry changes nothing
    assert again.schema_version() == SCHEMA_VERSION and len(again.list()) == 3
    again.close()


def test_a_role_that_may_only_read_lists_and_is_told_in_one_line_when_it_writes(pg_database: str) -> None:
    """A read-only reporting role on a team registry: reads work (opening writes nothing when the schema is current),
    a write is one line naming the permission (it was a dump of the SQL and its parameters, exit 1)."""
    import uuid

    import psycopg
    from psycopg import sql

    from llmkit.registry import RegistryUnavailable

    owner = Registry(pg_database)
    owner.add("model", "team-model")
    owner.close()
    role = f"llmkit_ro_{uuid.uuid4().hex[:8]}"
    admin = sa.engine.make_url(pg_database).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(role)))
    try:
        reader = Registry(sa.engine.make_url(pg_database).set(username=role).render_as_string(hide_password=False))
        assert [r.name for r in reader.list("model")] == ["team-model"]
        with pytest.raises(RegistryUnavailable, match=r"^the registry at postgresql\+psycopg://llmkit_ro_\w+@.* refused "
                                                      r"this role \(permission denied for table records\).*write access$"):
            reader.add("model", "not-allowed")
        reader.close()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_registry_from_a_newer_llmkit_is_refused(registry_url: str) -> None:
    _execute_by_hand(registry_url, V1_SCHEMA[:3] + [f"INSERT INTO llmkit_schema (version) VALUES ({SCHEMA_VERSION + 1})"])
    with pytest.raises(UserError, match=f"schema v{SCHEMA_VERSION + 1}, newer than this llmkit"):
        Registry(registry_url)


# -- several processes -------------------------------------------------------------------------------

WRITER = r"""
import pathlib, sys, time
url, ready, go, writer, count = sys.argv[1:6]
from llmkit.registry import Registry
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.002)
reg = Registry(url)  # both open the fresh registry at once, so both race to create the schema too
for i in range(int(count)):
    reg.add("model", "shared", params={"writer": int(writer), "i": i})
reg.close()
"""


def test_two_processes_writing_concurrently_lose_nothing(registry_url: str, tmp_path: Path) -> None:
    per_writer = 40
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, registry_url, str(ready[i]), str(go), str(i), str(per_writer)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "writers did not start"
            time.sleep(0.01)
        go.touch()
        for p in procs:
            _out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            p.kill()
            p.wait()

    reg = Registry(registry_url)
    recs = reg.list(name="shared")
    reg.close()
    assert sorted(r.version for r in recs) == list(range(1, 2 * per_writer + 1))
    assert len({r.id for r in recs}) == 2 * per_writer
    assert Counter(r.params["writer"] for r in recs) == {0: per_writer, 1: per_writer}
    if registry_url.startswith("sqlite"):
        with sqlite3.connect(sa.engine.make_url(registry_url).database) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_missing_name_suggests_the_close_one_or_lists_ten_and_says_there_are_more(tmp_path) -> None:
    from llmkit.errors import UserError

    reg = Registry.for_workspace(tmp_path)
    for i in range(12):
        (tmp_path / f"m{i}").mkdir()
        reg.add("model", f"model-{i:02d}", kind="causal-lm", path=tmp_path / f"m{i}")
    with pytest.raises(UserError, match=r"^no model named 'modle-03' in the registry; did you mean 'model-03'\?$"):
        reg.get("modle-03", "model")
    with pytest.raises(UserError, match=r"known: model-00, .*, model-09, \.\.\. \(12 in all: llmkit ls models\)$"):
        reg.get("zzz", "model")


def test_python_callers_reach_the_workspace_registry_as_the_commands_do(tmp_path, monkeypatch) -> None:
    """From Python, Registry.for_workspace('/path') (a str) raised TypeError, and resolve_model(NAME) without a
    registry did not find a registered model whatever $LLMKIT_HOME said (the README's own example)."""
    from llmkit.models.io import resolve_model

    reg = Registry.for_workspace(str(tmp_path))
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    rec = reg.add("model", "mine", kind="causal-lm", path=folder)
    monkeypatch.setenv("LLMKIT_HOME", str(tmp_path))
    assert resolve_model("mine").id == rec.id


def test_a_sqlite_registry_in_a_folder_that_is_not_there_says_so(tmp_path: Path) -> None:
    from llmkit.registry import RegistryUnavailable

    with pytest.raises(RegistryUnavailable, match=rf"^cannot open the registry sqlite:///{tmp_path}/gone/registry.db: its "
                                                  rf"folder {tmp_path}/gone does not exist"):
        Registry(f"sqlite:///{tmp_path / 'gone' / 'registry.db'}")


def test_an_id_prefix_two_records_share_finds_neither(registry: Registry) -> None:
    # `llmkit rm PREFIX` must not pick one of two records whose ids start alike
    from llmkit.registry.schema import records

    first, second = registry.add("dataset", "a"), registry.add("dataset", "b")
    registry.write(lambda conn: [conn.execute(records.update().where(records.c.id == rec.id).values(id=new))
                                 for rec, new in ((first, "abcdef000001"), (second, "abcdef000002"))])
    assert registry.find("abcdef") is None and registry.find("abcd") is None
    assert registry.find("abcdef0000") is None and registry.find("abcdef000001").name == "a"
