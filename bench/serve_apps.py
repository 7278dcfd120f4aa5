"""Serving for applications (issue 19), on the real SmolLM2-135M-Instruct, each goal a ratio measured in one run:

- constrained decoding: decode seconds per token of answers under a JSON schema / of free answers (goal <= 1.3);
- many adapters: 4 LoRA adapters x 8 clients on one base / 32 clients on one merged model, aggregate tokens/s
  (goal >= 0.8);
- prefix reuse: a 1,000-token shared system prompt, time to first token without / with the prefix cache (goal >= 5);
- the peer: llama-cpp-python's own OpenAI server (`python -m llama_cpp.server`) on the same q8_0 GGUF, 32 clients,
  64 tokens each: llmkit's aggregate tokens/s / the peer's (goal >= 3) and time to first token p50 (lower);
- one client: batch-1 decode tokens/s of the torch backend / llama.cpp's on the same model (goal >= 0.8): the
  torch backend serves the model quantized to int8 in blocks of 32 (`llmkit quantize --method int8-weight
  --group-size 32`), the counterpart of the q8_0 GGUF llama.cpp serves; fp32 torch is reported beside it.

llmkit's servers run with --max-batch 32 --max-context 2048 (a full batch of 8,192-token rows would not fit
this machine's memory, and no request here comes near 2,048 tokens). Every server is a process of its own, started, measured and stopped before the next, so none competes with
another for the 2 cores. The peer gets the same GGUF, both cores (--n_threads) and the same requests; the clients
are the same lean streaming client for all (http.client), and tokens are counted by tokenizing each answer's
text with the model's tokenizer, the same way for every server. The peer's packages (llama_cpp.server needs
pydantic-settings and starlette-context) are installed into this environment when missing: the bench's, not
llmkit's dependencies.

    .venv/bin/python bench/serve_apps.py [--clients 32] [--per-client 2] [--skip peer,...]

The last line of output is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
QUESTIONS = ["Write a short story about a lighthouse keeper.", "Explain how rain forms, step by step.",
             "Describe a busy market in the morning.", "Give advice to someone learning to cook.",
             "Tell me about the history of bicycles.", "Describe the life of a honey bee.",
             "Write a letter to a friend about a trip to the sea.", "Explain why the sky is blue."]
SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer"},
                                      "city": {"type": "string", "maxLength": 30}}, "required": ["name", "age", "city"]},
    {"type": "object", "properties": {"title": {"type": "string", "maxLength": 40},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                               "maxItems": 4}}, "required": ["title", "tags"]},
    {"type": "object", "properties": {"steps": {"type": "array", "items": {"type": "string", "maxLength": 40},
                                                "minItems": 2, "maxItems": 3}}, "required": ["steps"]},
    {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
                                      "reason": {"type": "string", "maxLength": 80}}, "required": ["answer", "reason"]},
]


# --- servers -----------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process: llmkit's (`llmkit serve`) or the peer's (`python -m llama_cpp.server`)."""

    def __init__(self, label: str, argv: list[str], env: dict, port: int):
        self.label, self.url = label, f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **env})
        deadline = time.monotonic() + 300
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.log.seek(0)
                    sys.exit(f"{label} did not start:\n{self.log.read().decode()[-3000:]}")
                time.sleep(0.5)
        # Listening is not ready: wait for the model list (llmkit loads models before it listens; the peer too).
        for _ in range(600):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/v1/models")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)

    @classmethod
    def llmkit(cls, label: str, ws: Path, models: list[str], *extra: str) -> Server:
        port = _free_port()
        return cls(label, [sys.executable, "-m", "llmkit", "serve", *models, "--port", str(port), "--no-ui",
                           "--max-batch", "32", "--max-queue", "512", "--max-context", "2048", *extra],
                   {"LLMKIT_HOME": str(ws)}, port)

    @classmethod
    def peer(cls, gguf: Path) -> Server:
        port = _free_port()
        return cls("llama_cpp.server", [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
                                        "127.0.0.1", "--port", str(port), "--n_threads", str(CORES), "--n_ctx", "4096",
                                        # Its default lets each new request interrupt the one streaming (answers cut
                                        # to a token under load): off, so every request is answered whole, queued.
                                        "--interrupt_requests", "False"],
                   {}, port)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- the client ----------------------------------------------------------------------------------------------

def ask(url: str, body: dict) -> dict:
    """One streaming chat request: its start, first-token and end times and its whole text."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    start = time.perf_counter()
    first, text, usage = None, [], None
    conn = http.client.HTTPConnection(host, port, timeout=900)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps({**body, "stream": True,
                                                                       "stream_options": {"include_usage": True}}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"{resp.status}: {resp.read()[:300]!r}")
        while line := resp.readline():
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first if first is not None else time.perf_counter()
                    text.append(piece)
    finally:
        conn.close()
    end = time.perf_counter()
    return {"start": start, "first": first or end, "end": end, "text": "".join(text), "usage": usage}


class Counter:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def load(url: str, bodies: list[dict], clients: int, count: Counter) -> dict:
    """Closed-loop clients, each sending its share of `bodies` back to back: aggregate tokens/s and TTFT."""
    share = [bodies[c::clients] for c in range(clients)]
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(lambda mine: [ask(url, b) for b in mine], share) for r in rs]
    wall = time.perf_counter() - start
    tokens = sum(count(r["text"]) for r in results)
    ttft = sorted(r["first"] - r["start"] for r in results)
    return {"requests": len(results), "tokens": tokens, "seconds": round(wall, 2), "tok_per_s": round(tokens / wall, 1),
            "ttft_p50_ms": round(1000 * statistics.median(ttft), 1)}


def decode_rate(url: str, bodies: list[dict], count: Counter, generated: bool = False) -> dict:
    """One request at a time: seconds per token after the first (decode alone), median over requests. Tokens
    as the server generated them when `generated` (its usage: a constrained answer is often spelled in more
    tokens than its text re-tokenizes to), else the text re-tokenized (the same count for every server)."""
    per_token, ttft = [], []
    for body in bodies:
        r = ask(url, body)
        n = r["usage"] if generated else count(r["text"])
        if n > 4:
            per_token.append((r["end"] - r["first"]) / (n - 1))
        ttft.append(r["first"] - r["start"])
    s = statistics.median(per_token)
    return {"requests": len(bodies), "s_per_token": s, "tok_per_s": round(1 / s, 1),
            "ttft_p50_ms": round(1000 * statistics.median(ttft), 1)}


def chat(model: str, question: str, max_tokens: int = 64, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


# --- set-up ----------------------------------------------------------------------------------------------------

def prepare(ws: Path) -> dict:
    """smollm2-135m, 4 LoRA adapters of it (random B, rank 8, every projection), adapter 1 merged, a q8_0 GGUF."""
    import torch
    from peft import LoraConfig, get_peft_model

    from llmkit.config import ExportConfig, QuantizeConfig
    from llmkit.models.io import load_causal_lm, resolve_model
    from llmkit.optimize.export import export
    from llmkit.optimize.quantize import quantize
    from llmkit.registry import Registry
    from llmkit.train.lora import merge, save_adapter
    from llmkit.workspace import Workspace

    work = Workspace.open(ws)
    registry = Registry.for_workspace(work.root)
    base = resolve_model("smollm2-135m", registry)
    adapters = []
    for n in range(4):
        lm, tok = load_causal_lm(base)
        torch.manual_seed(n)
        peft = get_peft_model(lm, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.002)
        folder = work.new_folder("models", f"bench-adapter-{n}")
        save_adapter(peft, tok, folder, base, {"base": {"path": str(base.path), "ref": base.ref}, "task": "causal-lm"})
        adapters.append(str(folder))
    merged = merge(adapters[0], work, registry, name="bench-merged")
    gguf, _ = export("smollm2-135m", ExportConfig(quant="q8_0", table=False, name="bench-smol-gguf"), work, registry)
    # the torch backend's counterpart of the q8_0 GGUF: int8 weights with a scale per block of 32 inputs
    quantize("smollm2-135m", QuantizeConfig(method="int8-weight", group_size=32, table=False, name="bench-smol-int8"),
             work, registry)
    from transformers import AutoTokenizer

    return {"adapters": adapters, "merged": merged.name, "gguf_model": "bench-smol-gguf",
            "gguf": next(Path(gguf.path).glob("*.gguf")) if Path(gguf.path).is_dir() else Path(gguf.path), "tokenizer": AutoTokenizer.from_pretrained(str(base.path))}


def peer_ready() -> None:
    try:
        import llama_cpp.server.app  # noqa: F401  (the server module imports; its app needs the extras)
    except ImportError:
        print("installing the peer's server packages into this environment (pydantic-settings, starlette-context)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pydantic-settings", "starlette-context"],
                       check=True)


def system_prompt(tokenizer, tokens: int = 1000) -> str:
    text = SHAKESPEARE.read_text()[:20_000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return "Answer in the style of this text.\n" + tokenizer.decode(ids)


# --- phases ----------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--per-client", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated phases to skip: structured,adapters,prefix,peer")
    ap.add_argument("--workspace", type=Path, default=None)
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="llmkit-bench-apps-"))
    t0 = time.perf_counter()
    setup = prepare(ws)
    count = Counter(setup["tokenizer"])
    print(f"set-up: {time.perf_counter() - t0:.0f} s (workspace {ws})")
    out: dict = {"clients": args.clients, "per_client": args.per_client, "cores": CORES}
    n = args.clients * args.per_client
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]

    if "structured" not in skip:
        with Server.llmkit("torch", ws, ["smol=smollm2-135m"]) as s:
            ask(s.url, chat("smol", "warm up", 8, response_format={"type": "json_object"}))
            free = decode_rate(s.url, [chat("smol", f"Describe item {i} of a list as JSON.", 48) for i in range(8)], count,
                               generated=True)
            fmt = [{"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": SCHEMAS[i % len(SCHEMAS)],
                                                            "strict": True}} for i in range(8)]
            constrained = decode_rate(s.url, [chat("smol", f"Describe item {i} of a list as JSON.", 48, response_format=f)
                                              for i, f in enumerate(fmt)], count, generated=True)
        out["structured"] = {"free": free, "constrained": constrained,
                             "ratio": round(constrained["s_per_token"] / free["s_per_token"], 3), "goal": "<= 1.3"}
        print("structured:", json.dumps(out["structured"]))

    if "adapters" not in skip:
        specs = [f"--adapter=a{k}={a}" for k, a in enumerate(setup["adapters"])]
        with Server.llmkit("torch + 4 adapters", ws, ["smol=smollm2-135m"], *specs) as s:
            ask(s.url, chat("a0", "warm up", 4))
            many = load(s.url, [chat(f"a{i % 4}", q) for i, q in enumerate(questions)], args.clients, count)
        with Server.llmkit("torch merged", ws, [f"merged={setup['merged']}"]) as s:
            ask(s.url, chat("merged", "warm up", 4))
            one = load(s.url, [chat("merged", q) for q in questions], args.clients, count)
        out["adapters"] = {"four_adapters": many, "merged": one,
                           "ratio": round(many["tok_per_s"] / one["tok_per_s"], 3), "goal": ">= 0.8"}
        print("adapters:", json.dumps(out["adapters"]))

    if "prefix" not in skip:
        system = system_prompt(setup["tokenizer"])
        bodies = [{**chat("smol", q, 1), "messages": [{"role": "system", "content": system},
                                                     {"role": "user", "content": q}]} for q in QUESTIONS]
        figures = {}
        for label, extra in (("with", []), ("without", ["--prefix-cache-mb", "0"])):
            with Server.llmkit(f"torch prefix cache {label}", ws, ["smol=smollm2-135m"], *extra) as s:
                ask(s.url, bodies[0])  # the first request computes the system prompt either way
                times = [(r := ask(s.url, b))["first"] - r["start"] for b in bodies]
            figures[label] = round(1000 * statistics.median(times), 1)
        out["prefix"] = {"system_tokens": count(system), "ttft_ms_with": figures["with"],
                         "ttft_ms_without": figures["without"],
                         "ratio": round(figures["without"] / figures["with"], 2), "goal": ">= 5"}
        print("prefix:", json.dumps(out["prefix"]))

    if "peer" not in skip:
        peer_ready()
        rows = {}
        for label, start in (("peer", lambda: Server.peer(setup["gguf"])),
                             ("llama.cpp", lambda: Server.llmkit("llama.cpp", ws, [f"smol={setup['gguf_model']}"])),
                             ("torch", lambda: Server.llmkit("torch", ws, ["smol=smollm2-135m"])),
                             ("torch int8", lambda: Server.llmkit("torch int8", ws, ["smol=bench-smol-int8"]))):
            model = "smol" if label != "peer" else str(setup["gguf"])
            with start() as s:
                ask(s.url, chat(model, "warm up", 4))
                single = decode_rate(s.url, [chat(model, q) for q in QUESTIONS[:6]], count)
                busy = load(s.url, [chat(model, q) for q in questions], args.clients, count)
            rows[label] = {"one_client": single, "load": busy}
            print(f"{label}:", json.dumps(rows[label]))
        peer = rows["peer"]["load"]
        out["peer"] = {label: row for label, row in rows.items()}
        out["peer"]["ratios"] = {
            f"{label}_vs_peer_tok_per_s": round(rows[label]["load"]["tok_per_s"] / peer["tok_per_s"], 2)
            for label in ("llama.cpp", "torch", "torch int8")} | {
            f"{label}_ttft_p50_below_peer": rows[label]["load"]["ttft_p50_ms"] < peer["ttft_p50_ms"]
            for label in ("llama.cpp", "torch", "torch int8")}
        # the same model at the same precision: the int8 torch model (blocks of 32) against the q8_0 GGUF
        out["one_client"] = {"torch_int8_tok_per_s": rows["torch int8"]["one_client"]["tok_per_s"],
                             "torch_fp32_tok_per_s": rows["torch"]["one_client"]["tok_per_s"],
                             "llama_cpp_tok_per_s": rows["llama.cpp"]["one_client"]["tok_per_s"],
                             "peer_tok_per_s": rows["peer"]["one_client"]["tok_per_s"],
                             "ratio": round(rows["torch int8"]["one_client"]["tok_per_s"]
                                            / rows["llama.cpp"]["one_client"]["tok_per_s"], 3),
                             "ratio_fp32": round(rows["torch"]["one_client"]["tok_per_s"]
                                                 / rows["llama.cpp"]["one_client"]["tok_per_s"], 3), "goal": ">= 0.8"}
    out["seconds"] = round(time.perf_counter() - t0)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main()
