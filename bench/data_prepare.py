"""How fast is `llmkit data prepare --task lm`, and does its memory stay flat as the input grows?

Input: varied copies of tiny shakespeare (1.1 MB each), written to a temporary folder. Most copies
shuffle the speeches and change a few words, so every chunk is new text; every tenth copy repeats
an earlier one byte for byte (exact duplicates) and two in ten repeat the previous copy with one
word changed in a tenth of the speeches (near duplicates); a few speeches carry an e-mail address
or a phone number, so PII redaction has something to do. The run is the full stage: clean, exact
and near dedupe, PII redaction, byte-level BPE (bpe:4096) trained on the train split, token shards.

Each size runs in a fresh process (`--child`) so imports and caches of one run do not flatter the
next; the parent samples the memory of that process and its worker processes: the sum of their RSS
every 20 ms (an upper bound: forked workers share pages with the parent) and of their PSS every 200 ms
(shared pages split between the processes that share them, i.e. what the run really occupies; reading
it costs a few milliseconds of CPU, which sampling every 20 ms would take from the run it measures).
Throughput is input megabytes (10^6 bytes) over the seconds `prepare()` takes, so interpreter
start-up and imports (about a second) are excluded; the end-to-end wall time is reported beside it.

    .venv/bin/python bench/data_prepare.py [--mb 50] [--ratio 10] [--workers N]

runs the stage at --mb / --ratio and --mb megabytes and prints one line of JSON last.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
COPY_BYTES = TINY.stat().st_size if TINY.exists() else 1_115_394


def make_inputs(folder: Path, megabytes: float, seed: int = 0) -> int:
    """Write ceil(megabytes / 1.1) varied copies of tiny shakespeare; return the bytes written."""
    text = TINY.read_text(encoding="utf-8")
    speeches = text.split("\n\n")
    words = sorted(set(re.findall(r"[A-Za-z]{3,}", text)))
    rng = random.Random(seed)
    copies = max(1, round(megabytes * 1e6 / COPY_BYTES))
    folder.mkdir(parents=True, exist_ok=True)
    history: list[list[str]] = []
    total = 0
    for i in range(copies):
        if i % 10 == 9:
            body = history[rng.randrange(len(history))]  # an exact copy of an earlier one
        elif i % 10 in (3, 6):
            body = [_mutate(s, rng, words) if rng.random() < 0.1 else s for s in history[-1]]
        else:
            body = speeches[:]
            rng.shuffle(body)
            body = [_mutate(s, rng, words, pii=rng.random() < 0.01) if rng.random() < 0.3 else s for s in body]
        history.append(body)
        data = "\n\n".join(body).encode("utf-8")
        (folder / f"copy{i:04d}.txt").write_bytes(data)
        total += len(data)
    return total


def _mutate(speech: str, rng: random.Random, words: list[str], pii: bool = False) -> str:
    tokens = speech.split(" ")
    tokens[rng.randrange(len(tokens))] = rng.choice(words)
    if pii:
        tokens.append(rng.choice([f"write to {rng.choice(words).lower()}{rng.randrange(100)}@example.org",
                                  f"call +44 20 7946 {rng.randrange(1000, 9999)}"]))
    return " ".join(tokens)


def child(inputs: Path, workspace: Path, workers: int | None) -> None:
    """One prepare run in this process; prints its seconds and own peak RSS as JSON."""
    import resource

    sys.path.insert(0, str(ROOT / "src"))
    from llmkit.config import DataConfig
    from llmkit.data import prepare
    from llmkit.registry import Registry
    from llmkit.workspace import Workspace

    if workers is not None:
        os.environ["LLMKIT_DATA_WORKERS"] = str(workers)
    ws = Workspace.open(workspace)
    cfg = DataConfig(inputs=[str(inputs)], name="bench", task="lm", tokenizer="bpe:4096", pii="redact", dedupe="near")
    t0 = time.perf_counter()
    ds = prepare(cfg, ws, Registry.for_workspace(ws.root))
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "main_peak_rss": rss, "counts": ds.manifest["counts"],
                      "pii": ds.manifest["pii"], "tokens": sum(s["tokens"] for s in ds.manifest["splits"].values()),
                      "timings": ds.manifest["timings"]}))


def run_size(megabytes: float, tmp: Path, workers: int | None) -> dict:
    import resource

    import psutil

    inputs = tmp / f"in-{megabytes:g}"
    size = make_inputs(inputs, megabytes)
    cmd = [sys.executable, __file__, "--child", str(inputs), "--workspace", str(tmp / f"ws-{megabytes:g}")]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = peak_pss = 0
    parent = psutil.Process(proc.pid)
    procs, tick = [parent], 0
    while proc.poll() is None:
        # RSS (/proc/PID/statm, ~0.05 ms) every 20 ms; the process list (a scan of /proc, ~1 ms) and PSS
        # (smaps_rollup, ~3 ms a process) every 200 ms. Sampling PSS every 20 ms took a quarter of one of
        # the two cores from the run being measured and made it ~20 % slower.
        try:
            if tick % 10 == 0:
                procs = [parent, *parent.children(recursive=True)]
                peak_pss = max(peak_pss, sum(p.memory_full_info().pss for p in procs))
            peak = max(peak, sum(p.memory_info().rss for p in procs))
        except psutil.Error:  # a worker exited between listing and reading
            pass
        tick += 1
        time.sleep(0.02)
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run and its workers, all waited for
    cpu = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed on {megabytes} MB (exit {proc.returncode})")
    res = json.loads(out.strip().splitlines()[-1])
    res.update(input_bytes=size, wall_seconds=wall, peak_rss=peak, peak_pss=peak_pss, mb_s=size / 1e6 / res["seconds"], cpu_seconds=cpu,
               load_before=load0)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0, help="the large input, in MB (>= 50 for the goal)")
    ap.add_argument("--ratio", type=float, default=10.0, help="the small input is --mb / --ratio")
    ap.add_argument("--workers", type=int, default=None, help="LLMKIT_DATA_WORKERS for the run (default: the stage's)")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--workspace", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.workspace, args.workers)
        return

    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-data-") as tmp:
        results = {}
        for mb in (args.mb / args.ratio, args.mb):
            r = run_size(mb, Path(tmp), args.workers)
            results[mb] = r
            c = r["counts"]
            print(f"{r['input_bytes'] / 1e6:7.1f} MB: prepare {r['seconds']:6.1f} s = {r['mb_s']:5.1f} MB/s "
                  f"(wall {r['wall_seconds']:.1f} s), peak RSS {r['peak_rss'] / 2**20:4.0f} MiB summed over processes, "
                  f"PSS {r['peak_pss'] / 2**20:4.0f} MiB, main process {r['main_peak_rss'] / 2**20:.0f} MiB")
            print(f"          records {c['ingested']} read, "
                  f"{c['duplicates_exact']} exact + {c['duplicates_near']} near duplicates, kept {c['kept']}; "
                  f"PII {sum(r['pii'].values())}; tokens {r['tokens']}")
            print(f"          CPU {r['cpu_seconds']:.1f} s (all processes; {r['input_bytes'] / 1e6 / r['cpu_seconds']:.1f} MB per "
                  f"CPU-second), load average before {r['load_before']:.2f}; phases {r['timings']}")
    small, large = results[args.mb / args.ratio], results[args.mb]
    print(json.dumps({
        "throughput_mb_s": round(large["mb_s"], 2),
        "input_mb": round(large["input_bytes"] / 1e6, 1),
        "seconds": round(large["seconds"], 2),
        "wall_seconds": round(large["wall_seconds"], 2),
        "cpu_seconds": round(large["cpu_seconds"], 2),
        "mb_per_cpu_second": round(large["input_bytes"] / 1e6 / large["cpu_seconds"], 2),
        "phases_seconds": large["timings"],
        "load_average_before": round(large["load_before"], 2),
        "peak_rss_mib_1x": round(small["peak_rss"] / 2**20),
        "peak_rss_mib_10x": round(large["peak_rss"] / 2**20),
        "peak_pss_mib_1x": round(small["peak_pss"] / 2**20),
        "peak_pss_mib_10x": round(large["peak_pss"] / 2**20),
        "main_peak_rss_mib_1x": round(small["main_peak_rss"] / 2**20),
        "main_peak_rss_mib_10x": round(large["main_peak_rss"] / 2**20),
        "input_mb_1x": round(small["input_bytes"] / 1e6, 1),
        "throughput_mb_s_1x": round(small["mb_s"], 2),
        "duplicates_exact": large["counts"]["duplicates_exact"],
        "duplicates_near": large["counts"]["duplicates_near"],
        "records": large["counts"]["ingested"],
        "ratio": args.ratio,  # the "1x" run is --mb / --ratio, the "10x" run --mb
        "workers": args.workers,
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
