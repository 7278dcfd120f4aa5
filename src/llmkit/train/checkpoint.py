"""Runs and their resumable checkpoints, for every trainer: the run resolver (`resume_run`), the
checkpoint writer and reader, and `TrainingInterrupted`.

A run is a folder with `config.yaml` (the resolved config under its section's name: the run is defined
by it), `run.json`, `metrics.jsonl`, `checkpoints/` and `best/`.

A checkpoint is a folder `checkpoints/step-000060/` with `model.safetensors` and the training state
(optimizer moments, generator states, counters) as `state.safetensors` (its tensors) + `state.json` (the
rest, pointing at them): nothing in a checkpoint is ever unpickled. A `state.pt` (pickle, older llmkit) is
refused with a message.
It is written under a temporary name and renamed, so a kill mid-write leaves the previous
checkpoint as the latest usable one. Only the last K are kept.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from llmkit.config import RENAMED_SECTIONS
from llmkit.errors import UserError
from llmkit.registry import RegistryUnavailable
from llmkit.registry.run_state import (
    FAILED,
    FINISHED,
    RUNNING,
    STATE_KEYS,
    STOPPED,
    ended_mark,
    run_state,
    running_mark,
)
from llmkit.workspace import TMP_PREFIX, atomic_dir, make_folder, remove_stale_tmp

STEP_PREFIX = "step-"


class TrainingInterrupted(Exception):
    """Raised after the checkpoint on SIGINT/SIGTERM (or a stop at a given step) is written; says how to resume."""

    def __init__(self, step: int, run_id: str, stage: str, signum: int | None = None):
        super().__init__(f"stopped at step {step}; continue with: llmkit train {stage} --resume {run_id}")
        self.step, self.run_id, self.stage, self.signal = step, run_id, stage, signum  # signal None: a stop step


def write_run_config(run_dir: Path, section: str, cfg) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump({section: cfg.model_dump()}, sort_keys=False, allow_unicode=True))


# The runs a trainer call has started or resumed (see `tracks_runs`): (registry, folder, id, the state keys a resumed
# run had before, None for a new run); None
# outside such a call.
_STARTED: contextvars.ContextVar[list | None] = contextvars.ContextVar("llmkit_started_runs", default=None)


def tracks_runs(trainer):
    """A trainer's runs say how they ended (registry.run_state): finished when it returns, stopped on
    SIGINT/SIGTERM (it resumes), failed on anything else with the error's line. A run that fails with a user's
    mistake before its first checkpoint is not kept: a GRPO reward that raised on the first sampled answers left a
    registered run with no metrics and no model, listed like a finished one. Nested trainers (a stage calling
    `finetune.fit`) are tracked by the outermost, so "finished" comes after the model is registered."""
    @functools.wraps(trainer)
    def wrapper(*args, **kwargs):
        if _STARTED.get() is not None:
            return trainer(*args, **kwargs)
        token = _STARTED.set([])
        try:
            result = trainer(*args, **kwargs)
            _mark_all(ended_mark(FINISHED))
            return result
        except TrainingInterrupted as stop:
            _mark_all(ended_mark(STOPPED, str(stop)))
            raise
        except KeyboardInterrupt:
            # A second Ctrl-C stops at once, between checkpoints: the run is as resumable as after the first one
            # (from its last checkpoint), so it is stopped, not failed, and says how to go on like the first.
            resumable = [(run_dir, run_id) for _, run_dir, run_id, _ in _STARTED.get() if latest_step(run_dir)]
            if not resumable:
                _mark_all(ended_mark(FAILED, "KeyboardInterrupt: stopped before its first checkpoint"))
                raise
            run_dir, run_id = resumable[-1]
            stop = TrainingInterrupted(latest_step(run_dir), run_id, _stage_of(run_dir), signal.SIGINT)
            _mark_all(ended_mark(STOPPED, str(stop)))
            raise stop from None
        except RegistryUnavailable as err:
            # The database went down (or refused) mid-run: nothing can be marked or removed now; the run's checkpoint
            # is what the user needs to hear about, since the registry being back is all a resume waits for.
            resumable = [(run_dir, run_id) for _, run_dir, run_id, _ in _STARTED.get() if latest_step(run_dir)]
            if not resumable:
                raise
            run_dir, run_id = resumable[-1]
            said = str(err).removesuffix(", then run the command again")
            raise RegistryUnavailable(f"{said}; run {run_id} keeps its checkpoint of step {latest_step(run_dir)}: once "
                                      f"the registry is back, continue with: llmkit train {_stage_of(run_dir)} "
                                      f"--resume {run_id}") from None
        except UserError as err:
            kept = []
            for entry in _STARTED.get():
                registry, run_dir, run_id, before = entry
                if before is not None:  # a refused resume is not the run failing: as it was (finished, stopped, died)
                    _restore_state(registry, run_id, before)
                elif latest_step(run_dir) == 0:
                    registry.remove(run_id)
                    shutil.rmtree(run_dir, ignore_errors=True)
                else:
                    kept.append(entry)
            _STARTED.set(kept)
            _mark_all(ended_mark(FAILED, str(err)))
            raise
        except BaseException as err:
            line = (str(err).strip().splitlines() or [""])[0]
            _mark_all(ended_mark(FAILED, f"{type(err).__name__}: {line}" if line else type(err).__name__))
            raise
        finally:
            _STARTED.reset(token)
    return wrapper


def _stage_of(run_dir: Path) -> str:
    """The trainer a run folder belongs to: its config.yaml's one section (`pretrain`, `sft`, ...)."""
    try:
        section = next(iter(yaml.safe_load((run_dir / "config.yaml").read_text()) or {"STAGE": None}))
        return RENAMED_SECTIONS.get(section, section)  # a run an older llmkit made names pretrain `train`
    except (OSError, yaml.YAMLError, StopIteration):
        return "STAGE"


def _restore_state(registry, run_id: str, before: dict[str, Any]) -> None:
    try:
        registry.update_metrics(run_id, before)
    except Exception:  # noqa: BLE001 - best effort, as _mark_all
        pass


def _mark_all(mark: dict[str, Any]) -> None:
    """Best effort: a registry that cannot be written now (a full disk, a database gone) must not hide the error
    that ended the run."""
    for registry, _, run_id, _ in _STARTED.get() or []:
        try:
            registry.update_metrics(run_id, mark)
        except Exception:  # noqa: BLE001 - the run's own outcome is what the user must see
            pass


def _track(registry, run_dir: Path, run_id: str, before: dict[str, Any] | None) -> None:
    started = _STARTED.get()
    if started is not None:
        started.append((registry, run_dir, run_id, before))


def model_made_at(registry, run_id: str | None, step: int) -> bool:
    """Whether a model registered from run `run_id` holds its weights of step `step`."""
    if run_id is None or registry is None:
        return True
    return any(relation == "produced_by" and child.type == "model" and child.metrics.get("steps") == step
               for relation, child in registry.children(run_id))


def start_run(ws, registry, name: str, section: str, cfg, parents: list[tuple[str, str]],
              info: dict[str, Any] | None = None, create: bool = True) -> tuple[Path, str | None]:
    """A new run: its folder (`runs/NAME-xxxxxx`) with config.yaml and run.json, registered with its parents.
    With `create` False (a torchrun rank other than 0) only the folder name is made."""
    import uuid

    from llmkit.registry import check_name

    check_name(name, "run")  # before the folder: a name like '../x' must not write anything anywhere
    run_dir = ws.folder("runs", f"{name}-{uuid.uuid4().hex[:6]}")
    if not create:
        return run_dir, None
    make_folder(run_dir)
    write_run_config(run_dir, section, cfg)
    rec = registry.add("run", name, kind=section, path=run_dir, params=cfg.model_dump(), parents=parents,
                       metrics=running_mark())
    (run_dir / "run.json").write_text(json.dumps({"id": rec.id, **(info or {})}))
    _track(registry, run_dir, rec.id, before=None)
    return run_dir, rec.id


def resume_run(cfg, section: str, registry) -> tuple[Any, Path | None, str | None]:
    """For `resume`: the run's saved config (the run is defined by it), its folder and its id;
    (cfg, None, None) when not resuming."""
    if not cfg.resume:
        return cfg, None, None
    path = Path(cfg.resume)
    rec = None if path.is_dir() else registry.find(cfg.resume, "run")
    if rec is not None:
        path = Path(rec.path)
    elif not path.is_dir() and path.name == cfg.resume and getattr(registry, "root", None) is not None \
            and (Path(registry.root) / "runs" / cfg.resume).is_dir():
        path = Path(registry.root) / "runs" / cfg.resume  # the run folder's name, as the runs/ folder shows it
    if not (path / "config.yaml").exists():
        raise UserError(f"{section}.resume = '{cfg.resume}': no run with that id, name, folder or folder name (llmkit ls runs lists them)")
    saved_body = yaml.safe_load((path / "config.yaml").read_text())
    # Runs written before sections were named after their commands keep the old name.
    body = {RENAMED_SECTIONS.get(k, k): v for k, v in saved_body.items()}
    if section not in body:
        raise UserError(f"{section}.resume = '{cfg.resume}': that run is a '{next(iter(body))}' run, not {section}")
    saved = type(cfg).model_validate(body[section])
    # The saved config is the run: a value given now that differs from it would be ignored, so it is refused
    # (a resumed run with --lr 1e-3 went on at the old rate without a word). Only the step budget may grow.
    changed = [key for key in sorted(cfg.model_fields_set - {"resume", "max_steps"})
               if getattr(cfg, key) != getattr(saved, key)]
    if changed:
        shown = ", ".join(f"{key} {getattr(cfg, key)!r} (the run's: {getattr(saved, key)!r})" for key in changed[:4])
        raise UserError(f"{section}.resume = '{cfg.resume}': a resumed run keeps the config it started with, and "
                        f"{shown} differ{'s' if len(changed) == 1 else ''}; drop {'it' if len(changed) == 1 else 'them'} "
                        "(only max_steps may grow), or start a new run")
    given = getattr(cfg, "max_steps", None)
    if given and given != type(cfg).model_fields["max_steps"].default and given > (saved.max_steps or 0):
        saved.max_steps = given
    elif given and "max_steps" in cfg.model_fields_set and saved.max_steps and \
            given < (planned := max(saved.max_steps, latest_step(path))):
        # it was dropped without a word: the run went on to its own max_steps
        raise UserError(f"{section}.resume = '{cfg.resume}': max_steps {given} is below the run's {planned}, "
                        "and a resumed run keeps its schedule (only max_steps may grow); drop --max-steps, or stop it "
                        "where you want with Ctrl-C (it writes a checkpoint)")
    run_id = rec.id if rec else json.loads((path / "run.json").read_text())["id"]
    current = rec or (registry.find(run_id, "run") if registry is not None else None)
    if current is not None and run_state(current.metrics) == RUNNING:  # two trainers in one folder interleave checkpoints
        m = current.metrics
        raise UserError(f"{section}.resume = '{cfg.resume}': run {run_id} is still running (process {m.get('pid')} on "
                        f"{m.get('host')}); stop it first (Ctrl-C where it runs: it writes a checkpoint), then resume")
    _refuse_a_run_past_its_checkpoints(cfg.resume, section, saved, path, run_id, registry)
    if _STARTED.get() is not None and os.environ.get("RANK", "0") == "0":  # rank 0 speaks for a torchrun run
        before = {k: (current.metrics if current else {}).get(k) for k in STATE_KEYS}
        registry.update_metrics(run_id, running_mark())
        _track(registry, path, run_id, before=before)
    return saved, path, run_id


def _refuse_a_run_past_its_checkpoints(given: str, section: str, saved, path: Path, run_id: str, registry) -> None:
    """A run whose model holds more steps than its last checkpoint (written before the end of a run was one, with
    checkpoint_every past its last step) would train those steps again and register them as a new version each time."""
    if registry is None:
        return
    at = latest_step(path)
    made = [child.metrics.get("steps") for relation, child in registry.children(run_id) if relation == "produced_by"]
    steps = max((s for s in made if isinstance(s, int)), default=None)
    if at == 0 and made:  # it trained from step 0 again, as a new version of the same run
        raise UserError(f"{section}.resume = '{given}': run {run_id} finished without a checkpoint to resume from "
                        f"(checkpoint_every {getattr(saved, 'checkpoint_every', '?')} is past its last step); train "
                        "a new run instead")
    if steps is not None and steps > at:
        raise UserError(f"{section}.resume = '{given}': run {run_id} finished at step {steps} but its last checkpoint is "
                        f"step {at} (an older llmkit did not checkpoint a run's end), so resuming would train again from "
                        f"step {at} and register that as a new version; train a new run instead")


def run_model_folder(ws, name: str, run_id: str, step: int) -> Path:
    """The folder of the model a run makes: `<name>-<run id>`, or when a resumed run made one already, a folder of its
    own for this step (a continued run wrote over the weights of the version registered before it)."""
    first = ws.folder("models", f"{name}-{run_id}")
    if not first.exists():
        return first
    folder, n = ws.folder("models", f"{name}-{run_id}-step{step}"), 1
    while folder.exists():  # never another version's folder (a run continued twice to the same step)
        n += 1
        folder = ws.folder("models", f"{name}-{run_id}-step{step}-{n}")
    return folder


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Tied weights share storage; safetensors refuses shared tensors, so store each name's own copy.
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, state: dict[str, Any], keep: int,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `checkpoints/step-N/` atomically: `weights` (default: the whole model; fine-tuning passes only
    what it trains) and `state`; keep the last `keep`."""
    folder = run_dir / "checkpoints" / f"{STEP_PREFIX}{step:06d}"
    with atomic_dir(folder) as tmp:
        save_file(model_state(model) if weights is None else weights, str(tmp / "model.safetensors"))
        save_state(tmp, state)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.exists():
        return []
    remove_stale_tmp(root)  # a checkpoint write that was killed: never half-used, now gone
    found = [p for p in root.iterdir() if p.name.startswith(STEP_PREFIX) and not p.name.startswith(TMP_PREFIX)
             and ((p / STATE_JSON).exists() or (p / LEGACY_STATE).exists()) and (p / "model.safetensors").exists()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX):]))


def latest_step(run_dir: Path | None) -> int:
    """The step of the run's last usable checkpoint (0 when none): where a resumed run starts."""
    checkpoints = list_checkpoints(run_dir) if run_dir is not None else []
    return int(checkpoints[-1].name[len(STEP_PREFIX):]) if checkpoints else 0


def load_checkpoint(folder: Path, model: torch.nn.Module) -> dict[str, Any]:
    weights = load_file(str(folder / "model.safetensors"))
    model.load_state_dict(weights, strict=True)
    return load_state(folder)


STATE_JSON, STATE_TENSORS, LEGACY_STATE = "state.json", "state.safetensors", "state.pt"


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """`state` (dicts, lists, tuples, numbers, strings, tensors) as state.json + state.safetensors."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _pack(state, tensors)
    save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps(tree))


def load_state(folder: Path) -> dict[str, Any]:
    """The training state save_state wrote; a pickled state.pt (older llmkit, or planted) is refused unread."""
    folder = Path(folder)
    if not (folder / STATE_JSON).exists():
        raise UserError(f"{folder / LEGACY_STATE}: a pickle, which llmkit never unpickles (checkpoints keep their state "
                        f"in {STATE_JSON} + {STATE_TENSORS}); start the run again, or resume from a newer checkpoint")
    from llmkit.models.files import check_json_file, check_safetensors_file

    check_safetensors_file(folder / STATE_TENSORS)
    return _unpack(check_json_file(folder / STATE_JSON, "checkpoint state"), load_file(str(folder / STATE_TENSORS)))


def _pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"tensor": key}
    if isinstance(obj, dict):  # as pairs: the optimizer's state is keyed by parameter index (int)
        return {"dict": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"tuple": [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"checkpoint state holds a {type(obj).__name__}; only tensors, numbers, strings and containers are saved")


def _unpack(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_unpack(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if "tensor" in tree:
            return tensors[tree["tensor"]]
        if "tuple" in tree:
            return tuple(_unpack(v, tensors) for v in tree["tuple"])
        return {_unpack(k, tensors): _unpack(v, tensors) for k, v in tree["dict"]}
    return tree


def save_weights(folder: Path, model: torch.nn.Module) -> None:
    with atomic_dir(folder) as tmp:
        save_file(model_state(model), str(tmp / "model.safetensors"))


def load_weights(folder: Path, model: torch.nn.Module) -> None:
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
