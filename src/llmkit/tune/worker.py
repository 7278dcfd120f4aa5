"""One trial process of `llmkit tune --workers N`: `python -m llmkit.tune.worker PLAN.json INDEX`.

Reads the checked plan the parent wrote, takes its share of the cores and runs trials on the shared
study until it holds its total or the time is up. Killed, it leaves its trial to the heartbeat check.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(plan_file: str, index: str) -> int:
    import torch

    from llmkit.registry import Registry
    from llmkit.tune.space import read_space
    from llmkit.tune.study import Plan, run_trials
    from llmkit.workspace import Workspace

    threads = int(os.environ.get("LLMKIT_TUNE_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    plan = Plan(**json.loads(Path(plan_file).read_text()))
    ws = Workspace.open(Path(plan.workspace))
    registry = Registry(plan.registry_url)
    params = read_space(plan.space, plan.stage)
    run_trials(plan, params, ws, registry, worker=int(index), say=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
