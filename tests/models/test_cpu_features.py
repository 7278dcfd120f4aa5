"""The CPU's bf16 flag: a constant to torch.compile, read without importing torch's compiler."""

from __future__ import annotations

import subprocess
import sys

import torch

from llmkit.models.cpu_features import _cpu_flags_name_bf16, cpu_has_fast_bf16
from llmkit.models.llama import Llama
from llmkit.models.presets import llama_config


def test_the_flag_is_what_proc_cpuinfo_says():
    assert cpu_has_fast_bf16() is _cpu_flags_name_bf16()


def test_loading_the_training_llama_does_not_import_torchs_compiler():
    # torch._dynamo's import cost every command that loads a model 1.3 s (generate answered a typo in 6.3 s, now 3.7)
    code = "import sys, llmkit.models.llama, llmkit.train.bf16_matmul; print('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_a_training_block_compiles_to_one_graph_in_bf16_autocast():
    """The attention and the matmuls ask the flag in every call: read inside a compiled block, a file read broke the
    graph at each linear layer, and a compiled block ran no faster than an eager one."""
    torch.manual_seed(0)
    cfg = llama_config("nano", 97, 32, overrides={"hidden_size": 64, "intermediate_size": 96})
    model = Llama(cfg)
    block, x = model.layers[0], torch.randn(2, 32, 64)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(block)(x, model.cos[:32], model.sin[:32])
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
