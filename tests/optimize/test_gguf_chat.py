"""The chat template kept true through GGUF export, on the real SmolLM2-135M-Instruct: llama.cpp's
create_chat_completion on the exported GGUF alone renders and tokenizes every conversation (system turns
included) exactly as transformers' apply_chat_template, and gives the same greedy answer at f16. At q8_0
the rounding (of the weights, and of the activations in llama.cpp's q8_0 dot products) flips near-ties, so
its answers are compared on conversations whose greedy answer is not a near-tie; the Modelfile carries the
template in Go syntax."""

from __future__ import annotations

import pytest

from llmkit.config import ExportConfig
from llmkit.optimize.export import export
from llmkit.registry import Registry
from llmkit.workspace import Workspace

CONVERSATIONS = [
    [{"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three colors."}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What color is the sky?"}],
    [{"role": "system", "content": "You are a helpful geography teacher."}, {"role": "user", "content": "What is the largest ocean on Earth?"}],
    [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "How many days are in a week?"}],
]
# Conversations whose answers q8_0 must reproduce too (measured: the others' greedy answers flip at q8_0
# even against transformers running the same dequantized q8_0 weights).
NOT_NEAR_TIES = {"f16": range(len(CONVERSATIONS)), "q8_0": (3, 4)}
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def transformers_answers(smollm2):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2.path)
    lm = AutoModelForCausalLM.from_pretrained(smollm2.path).eval()
    prompts, answers = [], []
    for conversation in CONVERSATIONS:
        ids = tok.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = lm.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        prompts.append(ids[0].tolist())
        answers.append(tok.decode(out[0][ids.shape[1]:], skip_special_tokens=True).strip())
    return prompts, answers


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_llama_cpp_chat_on_the_gguf_alone_matches_transformers(smollm2, transformers_answers, quant, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    ws = Workspace.open(tmp_path / "ws")
    exported, _ = export("smollm2-135m", ExportConfig(quant=quant, table=False), ws, Registry.for_workspace(ws.root))
    gguf = exported.path / f"model-{quant}.gguf"
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=2, verbose=False)
    assert llm.metadata["tokenizer.chat_template"] == (smollm2.path / "chat_template.jinja").read_text()
    assert llm.metadata["tokenizer.ggml.eot_token_id"] == "2"  # <|im_end|>
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    # What create_chat_completion sends: the GGUF's own template, rendered, then tokenized by llama.cpp.
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="<|im_start|>")
    hf_prompts, hf_answers = transformers_answers
    for conversation, hf_ids in zip(CONVERSATIONS, hf_prompts, strict=True):
        rendered = formatter(messages=conversation).prompt
        assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == hf_ids
    for i in NOT_NEAR_TIES[quant]:
        answer = llm.create_chat_completion(messages=CONVERSATIONS[i], temperature=0, max_tokens=NEW_TOKENS)
        assert answer["choices"][0]["message"]["content"].strip() == hf_answers[i], (quant, CONVERSATIONS[i])
    assert "Paris" in hf_answers[0] and "Pacific" in hf_answers[3]
    modelfile = (exported.path / "Modelfile").read_text()
    assert "<|im_start|>{{ .Role }}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile
