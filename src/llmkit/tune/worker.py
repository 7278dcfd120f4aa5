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

    if os.environ.get("LLMKIT_TUNE_PARENT"):
        from llmkit.tune.stopping import die_with_parent

        die_with_parent(int(os.environ["LLMKIT_TUNE_PARENT"]))
    threads = int(os.environ.get("LLMKIT_TUNE_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)
    plan = Plan(**json.loads(Path(plan_file).read_text()))
    plan.storage, plan.registry_url = os.environ["LLMKIT_TUNE_STORAGE"], os.environ["LLMKIT_TUNE_REGISTRY_URL"]
    ws = Workspace.open(Path(plan.workspace))
    registry = Registry(plan.registry_url)
    params = read_space(plan.space, plan.stage)
    stop = run_trials(plan, params, ws, registry, worker=int(index), say=lambda line: print(line, flush=True))
    if stop.signal:
        print(f"stopped by {stop.name}", flush=True)
    return 0  # stopped by a signal too: the parent forwarded it, or died


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
