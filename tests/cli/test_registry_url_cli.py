"""Where the real CLI keeps its registry: `--db-url`, `workspace: {db_url: ...}` in a config file,
`$LLMKIT_DB_URL`, else `registry.db` in the workspace; and which one wins when several are given.

The PostgreSQL tests check the rows in the database itself (SQLAlchemy), and that no SQLite registry
appeared in the workspace beside the dataset folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml


def llmkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # Neither the caller's LLMKIT_DB_URL nor LLMKIT_HOME may leak in: each test says where the registry is.
    base = {k: v for k, v in os.environ.items() if k not in ("LLMKIT_DB_URL", "LLMKIT_HOME")}
    return subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, timeout=300,
                          env={**base, **(env or {})})


def ok(proc: subprocess.CompletedProcess) -> dict | list:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory, shared_data: Path) -> Path:
    """A few hundred lines of Shakespeare: enough for a char-level lm dataset, quick to prepare."""
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:8000])
    return path


def rows_in(url: str) -> list[tuple[str, str, int]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text("SELECT type, name, version FROM records ORDER BY name"))]
    finally:
        engine.dispose()


def prepare_and_list(ws: Path, text: Path, *where: str, env: dict[str, str] | None = None) -> list:
    """`data prepare` of `text` as dataset 'tiny', then `ls datasets`: both told where the registry is."""
    ok(llmkit("data", "prepare", str(text), "--name", "tiny", "--task", "lm", "--tokenizer", "char",
              "--workspace", str(ws), *where, "--json", env=env))
    return ok(llmkit("ls", "datasets", "--workspace", str(ws), *where, "--json", env=env))


def assert_registered_in_postgresql_only(listed: list, pg_database: str, ws: Path) -> None:
    assert [(r["type"], r["name"], r["version"]) for r in listed] == [("dataset", "tiny", 1)]
    assert rows_in(pg_database) == [("dataset", "tiny", 1)]
    assert Path(listed[0]["path"]).parent == ws / "datasets"  # the artifacts stay in the workspace
    assert not (ws / "registry.db").exists()


def test_llmkit_db_url_in_the_environment_puts_the_registry_in_postgresql(pg_database: str, tiny_text: Path,
                                                                         tmp_path: Path) -> None:
    ws, env = tmp_path / "ws", {"LLMKIT_DB_URL": pg_database}
    assert ok(llmkit("init", "--workspace", str(ws), "--json", env=env))["registry"] == pg_database
    listed = prepare_and_list(ws, tiny_text, env=env)
    assert_registered_in_postgresql_only(listed, pg_database, ws)


def test_the_db_url_flag_puts_the_registry_in_postgresql(pg_database: str, tiny_text: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    listed = prepare_and_list(ws, tiny_text, "--db-url", pg_database)
    assert_registered_in_postgresql_only(listed, pg_database, ws)


def test_workspace_db_url_in_the_config_file_puts_the_registry_in_postgresql(pg_database: str, tiny_text: Path,
                                                                            tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    config = tmp_path / "llmkit.yaml"
    config.write_text(yaml.safe_dump({"workspace": {"db_url": pg_database}}))
    listed = prepare_and_list(ws, tiny_text, "--config", str(config))
    assert_registered_in_postgresql_only(listed, pg_database, ws)


# -- precedence: SQLite files outside the workspace are enough to see which URL was used ---------------


def init_registry(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """Run `init`; return the registry it reports and which of the candidate files it created."""
    result = ok(llmkit("init", "--workspace", str(tmp_path / "ws"), *args, "--json", env=env))
    made = sorted(p.name for p in tmp_path.glob("*.db")) + sorted(p.name for p in (tmp_path / "ws").glob("*.db"))
    return result["registry"], made


@pytest.fixture
def urls(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "llmkit.yaml"
    config.write_text(yaml.safe_dump({"workspace": {"db_url": f"sqlite:///{tmp_path / 'config.db'}"}}))
    return {"flag": f"sqlite:///{tmp_path / 'flag.db'}", "env": f"sqlite:///{tmp_path / 'env.db'}",
            "config": str(config)}


def test_the_db_url_flag_wins_over_the_config_file_and_the_environment(urls: dict, tmp_path: Path) -> None:
    reported, made = init_registry(tmp_path, "--db-url", urls["flag"], "--config", urls["config"],
                                   env={"LLMKIT_DB_URL": urls["env"]})
    assert (reported, made) == (urls["flag"], ["flag.db"])


def test_the_config_file_wins_over_the_environment(urls: dict, tmp_path: Path) -> None:
    # The config file is named on this command line; the environment is ambient, so it is the weaker hint.
    reported, made = init_registry(tmp_path, "--config", urls["config"], env={"LLMKIT_DB_URL": urls["env"]})
    assert (reported, made) == (f"sqlite:///{tmp_path / 'config.db'}", ["config.db"])


def test_the_environment_wins_over_the_workspace_default(urls: dict, tmp_path: Path) -> None:
    reported, made = init_registry(tmp_path, env={"LLMKIT_DB_URL": urls["env"]})
    assert (reported, made) == (urls["env"], ["env.db"])
    reported, made = init_registry(tmp_path)
    assert (reported, made) == (f"sqlite:///{tmp_path / 'ws' / 'registry.db'}", ["env.db", "registry.db"])


def test_an_unreachable_db_url_is_one_line_and_exit_2(tmp_path: Path, monkeypatch, cli_here) -> None:
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as s:  # a port nothing listens on: bound here, never listened on
        s.bind(("127.0.0.1", 0))
        url = f"postgresql+psycopg://llmkit:s3cret@127.0.0.1:{s.getsockname()[1]}/llmkit"
        flag = llmkit("ls", "--workspace", str(tmp_path / "ws"), "--db-url", url)  # a real process: its stderr whole
        # the variable, on a machine with no workspace folder, as a cron job's `ls --json` (it said "nothing registered")
        monkeypatch.setenv("LLMKIT_DB_URL", url)
        env = cli_here("ls", "models", "--json", workspace=tmp_path / "none")
        doctor = json.loads(cli_here("doctor", "--json", workspace=tmp_path / "none", check=True).stdout)
    assert doctor["registry_state"].startswith("cannot be read: ") and "s3cret" not in json.dumps(doctor)
    assert doctor["workspace"].endswith("none (not made yet)") and not (tmp_path / "none").exists()
    for out in (flag, env):
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "cannot open the registry at" in out.stderr and "127.0.0.1" in out.stderr
        assert "s3cret" not in out.stderr  # the password is never printed
