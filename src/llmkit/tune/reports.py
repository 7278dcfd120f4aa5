"""A study's reports: optimisation history, parameter importances and parallel coordinates as PNGs in the
study folder, and the best trials as rows (`llmkit show STUDY` prints them as a table).

Plain matplotlib (Figure + Agg, no pyplot: no global state, no display); importances are Optuna's
(fANOVA over the completed trials).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


def best_rows(study: optuna.Study, metric: str, n: int = 10) -> list[dict[str, Any]]:
    """The `n` best completed trials, best first: number, value, params, run and model ids, seconds."""
    done = [t for t in study.get_trials(deepcopy=False, states=(COMPLETE,)) if t.value is not None]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done.sort(key=lambda t: t.value, reverse=maximize)
    return [{"trial": t.number, metric: t.value, **t.params, "run": t.user_attrs.get("run_id"),
             "seconds": t.user_attrs.get("seconds")} for t in done[:n]]


def write_reports(study: optuna.Study, folder: Path, metric: str) -> list[Path]:
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in (COMPLETE, PRUNED)]
    if not trials:
        return []
    out = [_history(study, trials, folder / "history.png", metric)]
    complete = [t for t in trials if t.state == COMPLETE and t.value is not None]
    if len(complete) >= 2 and complete[0].params:
        out.append(_parallel(study, complete, folder / "parallel.png", metric))
        import warnings

        try:
            with warnings.catch_warnings():  # tied trials: Optuna warns and weighs them equally; the plot says so
                warnings.simplefilter("ignore", UserWarning)
                importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError):  # every completed trial drew the same values: nothing to weigh
            importances = {}
        if importances:
            out.append(_importances(importances, folder / "importances.png"))
    return out


def _figure(size=(7, 4)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from llmkit.data.figures import use_cjk_font

    use_cjk_font()  # CJK labels in a CJK font, not boxes

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _history(study: optuna.Study, trials, path: Path, metric: str) -> Path:
    fig = _figure()
    ax = fig.subplots()
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in trials if t.state == COMPLETE and t.value is not None]
    ax.scatter([t.number for t in done], [t.value for t in done], color="#4c72b0", label="complete", zorder=3)
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)]) for t in trials
              if t.state == PRUNED and t.intermediate_values]
    if pruned:
        ax.scatter(*zip(*pruned, strict=True), color="#c44e52", marker="x", label="pruned (last evaluation)", zorder=3)
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        best = t.value if best is None else (max(best, t.value) if maximize else min(best, t.value))
        xs.append(t.number)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="#dd8452", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title(f"{study.study_name}: optimisation history")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _importances(importances: dict[str, float], path: Path) -> Path:
    fig = _figure((7, 1.2 + 0.4 * len(importances)))
    ax = fig.subplots()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="#55a868")
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title("Parameter importances")
    return _save(fig, path)


def _parallel(study: optuna.Study, done, path: Path, metric: str) -> Path:
    """One vertical axis per parameter (scaled to its range, log for log-float) and the metric last."""
    from matplotlib import colormaps

    names = sorted({k for t in done for k in t.params})
    columns = []
    for name in names:
        values = [t.params.get(name) for t in done]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        dist = done[0].distributions.get(name)
        if numeric and getattr(dist, "log", False):
            values = [math.log10(v) for v in values]
        if not numeric:  # categories: their index among the choices
            choices = list(getattr(dist, "choices", sorted(set(map(str, values)))))
            values = [choices.index(v) if v in choices else 0 for v in values]
        columns.append(_scaled(values))
    scores = [t.value for t in done]
    columns.append(_scaled(scores))
    fig = _figure((max(6, 1.6 * len(columns)), 4))
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    lo, hi = min(scores), max(scores)
    for i in range(len(done)):
        shade = (scores[i] - lo) / (hi - lo) if hi > lo else 1.0
        if study.direction == optuna.study.StudyDirection.MINIMIZE:
            shade = 1.0 - shade  # the best trials are always the brightest
        ax.plot(range(len(columns)), [c[i] for c in columns], color=cmap(shade), alpha=0.8)
    ax.set_xticks(range(len(columns)), names + [metric], rotation=20)
    ax.set_yticks([])
    for x in range(len(columns)):
        ax.axvline(x, color="#888", linewidth=0.8)
    ax.set_title("Parallel coordinates (each axis scaled to its range; bright = best)")
    return _save(fig, path)


def _scaled(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    return [(v - lo) / (hi - lo) if hi > lo else 0.5 for v in values]
