"""Serving throughput under load: aggregate tokens/s and time to first token at 1, 8, 32, 64 clients.

Trains the micro preset (~11 M parameters, byte-level BPE 2,048, context 256) on tiny shakespeare
for a few steps and exports it to GGUF q8_0, then for each backend (torch: continuous batching;
llama.cpp: continuous batching in one context) starts `llmkit serve` as its own process and sends streaming
chat requests (prompt ~40 tokens, max_tokens 64, temperature 1, seeded) from client threads:

- sequential: the same kind of requests, one at a time (the baseline);
- N concurrent clients, each sending --per-client requests back to back (one in flight at a time, so
  requests join and leave the running batch as they would in service): aggregate generated tokens/s
  over the wall time, and p50/p99 time to first token as the clients see it.

Goal: torch at 32 clients >= 4x its sequential throughput.

    .venv/bin/python bench/serve_load.py [--steps 60] [--backends torch,llama.cpp] [--clients 1,8,32,64]

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
PROMPTS = ["Tell me of the king.", "Where is Romeo tonight?", "What news from the market?", "Speak of the war."]


def llmkit(ws: Path, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "llmkit", *args, "--workspace", str(ws), "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"llmkit {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


class Server:
    def __init__(self, ws: Path, model: str, max_batch: int, workers: int, threads: int | None = None):
        env = {**os.environ, "LLMKIT_HOME": str(ws)}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen([sys.executable, "-m", "llmkit", "serve", model, "--port", "0", "--no-ui",
                                      "--max-batch", str(max_batch), "--max-queue", "512", "--workers", str(workers)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.url = None
        deadline = time.monotonic() + 180
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"llmkit serve did not start:\n{self.proc.stderr.read()[-2000:]}")
            found = re.search(r"serving on (http://\S+?)\s", line)
            self.url = found.group(1) if found else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def one_request(url: str, model: str, i: int, max_tokens: int) -> tuple[float, int]:
    """(seconds to the first content chunk, completion tokens) of one streaming chat request.

    A lean client (http.client, no JSON parsing of content chunks): the clients share the 2 cores
    with the server, and a heavy client would measure itself rather than the server.
    """
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                       "max_tokens": max_tokens, "temperature": 1.0, "seed": i, "stream": True,
                       "stream_options": {"include_usage": True}})
    host, port = urlsplit(url).hostname, urlsplit(url).port
    start = time.perf_counter()
    first, tokens = None, 0
    conn = http.client.HTTPConnection(host, port, timeout=600)
    try:
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {resp.read()[:300]!r}")
        while line := resp.readline():
            line = line.replace(b'": ', b'":')
            if first is None and b'"content":"' in line and b'"content":""' not in line:
                first = time.perf_counter() - start
            elif line.startswith(b"data: {") and b'"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    finally:
        conn.close()
    return (first if first is not None else time.perf_counter() - start), tokens


def run(url: str, model: str, clients: int, max_tokens: int, offset: int, per_client: int) -> dict:
    """`clients` closed-loop clients, each sending `per_client` requests back to back (one in flight)."""
    def client(c: int) -> list[tuple[float, int]]:
        return [one_request(url, model, offset + c * per_client + k, max_tokens) for k in range(per_client)]

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {"clients": clients, "tokens": tokens, "seconds": round(wall, 3), "tok_per_s": round(tokens / wall, 1),
            "ttft_p50_ms": round(1000 * statistics.median(ttft), 1),
            "ttft_p99_ms": round(1000 * ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))], 1)}


def sequential(url: str, model: str, n: int, max_tokens: int) -> dict:
    start = time.perf_counter()
    results = [one_request(url, model, 1000 + i, max_tokens) for i in range(n)]
    wall = time.perf_counter() - start
    tokens = sum(r[1] for r in results)
    ttft = sorted(r[0] for r in results)
    return {"requests": n, "tokens": tokens, "seconds": round(wall, 3), "tok_per_s": round(tokens / wall, 1),
            "ttft_p50_ms": round(1000 * statistics.median(ttft), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--backends", default="torch,llama.cpp")
    ap.add_argument("--clients", default="1,8,32,64")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--sequential", type=int, default=16, help="requests in the one-at-a-time baseline")
    ap.add_argument("--per-client", type=int, default=3, help="requests each client sends, one after another")
    ap.add_argument("--workers", type=int, default=0, help="decode workers of the server (0 = its default)")
    ap.add_argument("--rounds", type=int, default=3, help="repetitions; figures are medians")
    ap.add_argument("--threads", type=int, default=None, help="compute threads of the server (default: torch's)")
    ap.add_argument("--keep", default=None, help="keep the workspace here and reuse it on the next run")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    figures: dict = {"model": "micro (bpe 2048, context 256)", "max_tokens": args.max_tokens, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="llmkit-serve-bench-") as tmp:
        ws = Path(args.keep or tmp)
        t0 = time.perf_counter()
        ready = (ws / "registry.db").exists()
        models = {"torch": "micro", "llama.cpp": "micro-q8"}
        ready or llmkit(ws, "data", "prepare", str(TEXT), "--name", "shakespeare", "--task", "lm", "--tokenizer", "bpe:2048",
               "--doc-split", "blank-line", "--pii", "keep", "--dedupe", "none")
        ready or llmkit(ws, "train", "pretrain", "--data", "shakespeare", "--preset", "micro", "--context", "256",
               "--max-steps", str(args.steps), "--name", "micro", "--batch-size", "8")
        ready or llmkit(ws, "export", "micro", "--format", "gguf", "--quant", "q8_0", "--no-table", "--name", "micro-q8")
        print(f"set-up (data, {args.steps} training steps, export): {time.perf_counter() - t0:.0f} s", flush=True)
        for backend in args.backends.split(","):
            server = Server(ws, models[backend], max_batch=64, workers=args.workers, threads=args.threads)
            try:
                one_request(server.url, models[backend], 0, 8)  # warm-up
                # Rounds of (baseline, every level), so drift on a shared machine hits both alike;
                # each figure is the median over the rounds, the ratio the median of per-round ratios.
                bases, per_level = [], {n: [] for n in levels}
                for r in range(args.rounds):
                    base = sequential(server.url, models[backend], args.sequential, args.max_tokens)
                    bases.append(base)
                    for n in levels:
                        row = run(server.url, models[backend], n, args.max_tokens, offset=n * 1000 + r * 100_000,
                                  per_client=args.per_client)
                        row["vs_sequential"] = row["tok_per_s"] / base["tok_per_s"]
                        per_level[n].append(row)
                base = {k: statistics.median(b[k] for b in bases) for k in ("tok_per_s", "ttft_p50_ms")}
                rows = []
                for n in levels:
                    row = {k: round(statistics.median(r[k] for r in per_level[n]), 2)
                           for k in ("tok_per_s", "ttft_p50_ms", "ttft_p99_ms", "vs_sequential")}
                    row["clients"] = n
                    row["vs_sequential_per_round"] = [round(r["vs_sequential"], 2) for r in per_level[n]]
                    rows.append(row)
                    print(f"{backend:10s} {n:3d} clients: {row['tok_per_s']:8.1f} tok/s ({row['vs_sequential']:.2f}x "
                          f"sequential {base['tok_per_s']:.1f}; rounds {row['vs_sequential_per_round']}), "
                          f"TTFT p50 {row['ttft_p50_ms']:.0f} ms p99 {row['ttft_p99_ms']:.0f} ms", flush=True)
                figures["backends"][backend] = {"sequential": base, "concurrent": rows}
            finally:
                server.stop()
    torch_rows = {r["clients"]: r for r in figures["backends"].get("torch", {}).get("concurrent", [])}
    if 32 in torch_rows:
        figures["torch_32_clients_vs_sequential"] = torch_rows[32]["vs_sequential"]
        figures["goal_4x_met"] = torch_rows[32]["vs_sequential"] >= 4.0
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
