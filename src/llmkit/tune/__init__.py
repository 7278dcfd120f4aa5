"""Hyper-parameter search on Optuna (`llmkit tune STAGE`): one public function,

    llmkit.tune.tune(TuneConfig(stage="classify", data="sms", trials=20, timeout="30m")) -> StudyResult

`space` reads and checks search spaces, `trials` runs one trial (a registered run of the stage, pruned
from the loop's evaluations), `study` runs or joins a study and registers its outcome, `worker` is one
trial process of `--workers N`, `reports` draws the study's plots and its table of best trials.
"""

from llmkit.tune.study import StudyResult, tune

__all__ = ["tune", "StudyResult"]
