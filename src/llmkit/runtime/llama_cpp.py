"""llama.cpp (llama-cpp-python) for GGUF exports: one sequence (`LlamaCppBackend`, the backend interface),
a running batch in one context (`LlamaCppBatch`, for serving) and whole-window logits (`GgufLM`, for eval)."""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmkit.errors import UserError
from llmkit.models.files import check_gguf_file
from llmkit.models.io import Model
from llmkit.models.kind import exported_from


def gguf_file(model: Model) -> Path:
    info = json.loads((model.path / "llmkit.json").read_text()) if (model.path / "llmkit.json").exists() else {}
    name = info.get("gguf")
    if not name or not (model.path / name).exists():
        raise UserError(f"{model.ref} is not a GGUF export (no .gguf named in its llmkit.json); make one with: "
                        f"llmkit export {exported_from(model)} --format gguf, or leave --backend to auto")
    check_gguf_file(model.path / name)  # a cut file: named here, not llama.cpp's "failed to load model"
    return model.path / name


def open_llama(path: Path, n_ctx: int, logits_all: bool = False):
    try:
        from llama_cpp import Llama
    except ImportError:
        raise UserError("the llama.cpp backend needs llama-cpp-python, built portable: CMAKE_ARGS=\"-DGGML_NATIVE=OFF "
                        "-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON\" pip install llama-cpp-python") from None
    from llama_cpp._utils import suppress_stdout_stderr

    # verbose=False still lets through llama.cpp's warnings (llama-cpp-python maps ggml's WARN level to ERROR), such
    # as "n_ctx_seq (256) > n_ctx_train (128)" for every model with a context under llama.cpp's 256-token padding:
    # noise in a user's terminal and in `llmkit demo`.
    with suppress_stdout_stderr(disable=False):
        return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False,
                     n_threads=torch.get_num_threads(), seed=0)


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(self, model: Model):
        config = json.loads((model.path / "config.json").read_text())
        self.max_len = config["max_position_embeddings"]
        self.vocab_size = config["vocab_size"]
        eos = config.get("eos_token_id")
        self.eos_token_ids = {eos} if isinstance(eos, int) else set(eos or [])  # what a torch model's config says
        self.llm = open_llama(gguf_file(model), self.max_len)

    def _last_logits(self) -> torch.Tensor:
        # Without logits_all, llama-cpp-python keeps no scores; the context holds the last token's logits.
        return torch.from_numpy(np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab_size,)).copy())

    def prefill(self, ids: list[int], capacity: int):
        self.llm.reset()
        self.llm.eval(ids)
        return None, self._last_logits()

    def step(self, state, token: int) -> torch.Tensor:
        self.llm.eval([token])
        return self._last_logits()


@dataclass
class SeqState:
    seq: int     # llama.cpp sequence id: the sequence's slot in the shared KV cache
    length: int  # tokens in its cache, the position of the next one


class LlamaCppBatch:
    """Many sequences in one llama.cpp context, for serving: a KV cache of `max_batch` sequences of up
    to the model's context each, one `llama_decode` per step for the whole running batch (each token
    tagged with its sequence id and position), and new prompts packed into shared decodes. Greedy
    decoding here gives the same tokens as one sequence at a time (tested)."""

    name = "llama.cpp"

    def __init__(self, model: Model, max_batch: int, threads: int = 0, max_len: int = 0):
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        config = json.loads((model.path / "config.json").read_text())
        self.vocab_size, self.max_batch = config["vocab_size"], max_batch
        self.max_len = min(config["max_position_embeddings"], max_len or config["max_position_embeddings"])
        self._lib = llama_cpp
        self.llm = open_llama(gguf_file(model), 16)  # the weights; its own small context stays unused
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.max_len * max_batch
        params.n_seq_max = max_batch
        params.n_batch = max(512, self.max_len)  # a whole prompt fits one decode
        params.n_ubatch = min(512, params.n_batch)
        params.n_threads = params.n_threads_batch = threads or torch.get_num_threads()
        params.no_perf = True
        with suppress_stdout_stderr(disable=False):
            self.ctx = llama_cpp.llama_init_from_model(self.llm.model, params)
        if not self.ctx:
            raise UserError(f"llama.cpp could not make a context for {max_batch} sequences of {self.max_len} tokens; "
                            "lower --max-batch")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_batch = params.n_batch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.free = list(range(max_batch))  # a heap of free sequence ids

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self._lib.llama_batch_free(self.batch)
            self._lib.llama_free(self.ctx)
            self.ctx = None

    __del__ = close

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> list[torch.Tensor]:
        """One llama_decode of (token, position, sequence, wants logits) entries; the logits asked for."""
        b = self.batch
        b.n_tokens = len(entries)
        for i, (token, pos, seq, wants) in enumerate(entries):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, wants
            b.seq_id[i][0] = seq
        if self._lib.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed (KV cache full?)")
        return [torch.from_numpy(np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self.ctx, i), shape=(self.vocab_size,)).copy())
                for i, (*_, wants) in enumerate(entries) if wants]

    def prefill_many(self, prompts: list[list[int]], capacities: list[int]) -> tuple[list[SeqState], torch.Tensor]:
        states = [SeqState(heapq.heappop(self.free), 0) for _ in prompts]
        try:
            logits: list[torch.Tensor] = []
            entries: list[tuple[int, int, int, bool]] = []
            for state, ids in zip(states, prompts, strict=True):
                self._lib.llama_memory_seq_rm(self.memory, state.seq, -1, -1)
                for pos, token in enumerate(ids):
                    entries.append((token, pos, state.seq, pos == len(ids) - 1))
                    if len(entries) == self.n_batch:
                        logits += self._decode(entries)
                        entries = []
                state.length = len(ids)
            if entries:
                logits += self._decode(entries)
        except BaseException:
            for state in states:
                self.release(state)
            raise
        return states, torch.stack(logits)  # (B, vocab)

    def prefill(self, ids: list[int], capacity: int) -> tuple[SeqState, torch.Tensor]:
        states, logits = self.prefill_many([ids], [capacity])
        return states[0], logits[0]

    def step(self, states: list[SeqState], tokens: list[int]) -> torch.Tensor:
        logits = self._decode([(tok, s.length, s.seq, True) for s, tok in zip(states, tokens, strict=True)])
        for s in states:
            s.length += 1
        return torch.stack(logits)  # (B, vocab)

    def release(self, state: SeqState | None) -> None:
        if state is not None and state.seq >= 0:
            self._lib.llama_memory_seq_rm(self.memory, state.seq, -1, -1)
            heapq.heappush(self.free, state.seq)
            state.seq = -1  # released once


def greedy(backend: LlamaCppBackend, ids: list[int], new_tokens: int, eos: set[int] | None = None) -> list[int]:
    _, logits = backend.prefill(ids, len(ids) + new_tokens)
    out = []
    for i in range(new_tokens):
        tok = int(logits.argmax())
        out.append(tok)
        if (eos and tok in eos) or i == new_tokens - 1:
            break
        logits = backend.step(None, tok)
    return out


class GgufLM:
    """Just enough of a causal LM for llmkit.eval.lm: `config` and `model(input_ids=...).logits`, on llama.cpp.

    Each row is evaluated from an empty cache, so a window's logits see only that window, as in PyTorch.
    The context is as wide as the widest window asked for, not the model's: with every position's
    logits kept, a context of 8192 tokens of a 49k vocabulary would hold 1.6 GB of scores.
    """

    def __init__(self, model: Model):
        from types import SimpleNamespace

        self.config = SimpleNamespace(**json.loads((model.path / "config.json").read_text()))
        self.file = gguf_file(model)
        self.llm, self.n_ctx = None, 0
        self._device = torch.zeros(0)

    def parameters(self):
        yield self._device  # llmkit.eval.lm asks for the device

    def _llama(self, width: int):
        if self.llm is None or width > self.n_ctx:
            self.llm = None  # the old context's memory goes before the new one is made
            self.n_ctx = width
            self.llm = open_llama(self.file, self.n_ctx, logits_all=True)
        return self.llm

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        from types import SimpleNamespace

        llm = self._llama(input_ids.shape[1])
        rows = []
        for r, ids in enumerate(input_ids.tolist()):
            n = int(attention_mask[r].sum()) if attention_mask is not None else len(ids)
            llm.reset()
            llm.eval(ids[:n])
            logits = np.zeros((len(ids), self.config.vocab_size), dtype=np.float32)
            logits[:n] = llm.scores[:n]
            rows.append(torch.from_numpy(logits))
        return SimpleNamespace(logits=torch.stack(rows))
