"""Hugging Face Hub ids ('org/name') as MODEL (or tokenizer) arguments: a local folder in the Hub's cache.

One request asks the Hub whether the repo exists (a short timeout, no retries); then its config, tokenizer and
safetensors files come down into the Hub's cache (never pickle weights, never code) and every stage reads that
folder like any other. Offline ($HF_HUB_OFFLINE, or the Hub unreachable) a repo already in the cache is used as it
is, and one that is not is one line at once: transformers' own loaders retried each file five times (~50 s of
"Retrying in 8s" and "Name or service not known") before failing with its own words.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from pathlib import Path

from llmkit.errors import UserError

TIMEOUT_S = 5.0  # the one request asking the Hub about a repo; an answer takes well under a second
# What comes down: configs, tokenizers, chat templates and safetensors weights at the repo's top level.
ALLOW = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
IGNORE = ["*/*"]  # subfolders (onnx/, gguf/, original/...) hold other formats of the same weights
OFFLINE_FIX = ("check the name (llmkit ls models), or download the model where there is a network and bring its "
               "folder (llmkit import FOLDER)")
_CACHE_FOLDER = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/[^/]+/?$")


def is_hub_id(ref: str | None) -> bool:
    """'org/name' that is not a local path: what the Hub could hold."""
    if not ref or ref.count("/") != 1 or ref.startswith((".", "/", "~")) or Path(ref).expanduser().exists():
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True


def hub_id_of(path: Path | str) -> str | None:
    """The Hub id of a folder in the Hub's cache (…/models--org--name/snapshots/SHA), else None."""
    match = _CACHE_FOLDER.search(str(path))
    return f"{match['org']}/{match['name']}" if match else None


def offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE


def _go_offline() -> None:
    """The Hub did not answer: nothing else in this process (or the processes it starts) asks it again."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"


def _network_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import OfflineModeIsEnabled

    errors: list[type[BaseException]] = [OSError, OfflineModeIsEnabled]
    for module in ("httpx2", "httpx"):  # the HTTP client huggingface_hub uses, by its version
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())[:120]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


@functools.lru_cache(maxsize=64)  # a command resolves its model several times (checks, then the load): ask once
def hub_folder(repo_id: str, weights: bool = True, where: str | None = None, fix: str | None = None,
               hint: str = "") -> Path:
    """The local folder of Hub repo `repo_id` (its tokenizer and configs only when not `weights`): from the Hub (one
    quick request), else from the cache. A UserError in one line when neither has it, starting with `where` (what was
    asked and where it was looked for), then `fix` (what to do), then `hint` (e.g. "; did you mean 'x'?")."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = where or f"no model '{repo_id}': not in the registry, not a local folder"
    allow = ALLOW if weights else [p for p in ALLOW if p != "*.safetensors"]
    reason = "HF_HUB_OFFLINE is set" if offline() else None
    if reason is None:
        try:
            info = HfApi().model_info(repo_id, timeout=TIMEOUT_S)
            return Path(snapshot_download(repo_id, revision=info.sha, allow_patterns=allow, ignore_patterns=IGNORE,
                                          etag_timeout=TIMEOUT_S))
        except GatedRepoError:
            raise UserError(f"{repo_id} is gated on the Hugging Face Hub: accept its terms at "
                            f"https://huggingface.co/{repo_id} and log in (hf auth login), then run this again") from None
        except (RepositoryNotFoundError, RevisionNotFoundError):
            if (cached := _cached(repo_id, allow)) is not None:  # private, and no token here: the copy already here
                return cached
            raise UserError(f"{where}, nor on the Hugging Face Hub; check the spelling (the Hub's ids are "
                            f"org/name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct){hint}") from None
        except HfHubHTTPError as err:  # the Hub is down (5xx): as good as unreachable
            reason = f"it answered HTTP {getattr(err.response, 'status_code', '?')}"
        except _network_errors() as err:
            reason = _short(err)
        _go_offline()
    cached = _cached(repo_id, allow)
    if cached is not None:
        return cached
    from huggingface_hub import constants

    raise UserError(f"{where}, nor in the Hugging Face cache ({constants.HF_HUB_CACHE}), and the Hugging Face Hub "
                    f"cannot be reached (offline: {reason}); {fix or OFFLINE_FIX}{hint}")


def _cached(repo_id: str, allow: list[str]) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True, allow_patterns=allow, ignore_patterns=IGNORE))
    except Exception:  # LocalEntryNotFoundError, an incomplete snapshot, ...: not usable from the cache
        return None
    return folder if any(folder.iterdir()) else None
