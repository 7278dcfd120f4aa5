"""The chat template kept true through GGUF export, on the real SmolLM2-135M-Instruct and on a LoRA-tuned, merged
version of it (SFT on instruct_small, `merge`, export): llama.cpp's create_chat_completion on the exported GGUF
alone renders and tokenizes every conversation (system turns included) exactly as transformers'
apply_chat_template, and gives the same greedy answer at f16.

At q8_0 the rounding (of the weights, and of the activations in llama.cpp's q8_0 dot products) flips near-ties,
even against transformers running the same dequantized q8_0 weights: measured here, q8_0 moves the lead of
transformers' top token over the runner-up by up to 1.2 logits. So at q8_0 the prompts must still tokenize
exactly, and the answers agree where they are not near-ties: for the base, create_chat_completion's whole answers
on the conversations measured to have none; for both models, llama.cpp fed transformers' answer picks
transformers' token at every step whose lead is at least `NEAR_TIE` (a measured list would not do for the merged
model: its weights move with the training code). The merged model keeps the base's template through merge and
export; the Modelfile carries it in Go syntax."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from llmkit.config import ExportConfig, LoraConfig, SftConfig
from llmkit.models.pretrained import chat_template_of
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
# Conversations whose whole answers q8_0 reproduces on the base (measured: the others' greedy answers flip at q8_0
# even against transformers running the same dequantized q8_0 weights).
BASE_NOT_NEAR_TIES = {"f16": range(len(CONVERSATIONS)), "q8_0": (3, 4)}
NEAR_TIE = 1.5  # logits between transformers' greedy token and its runner-up below which q8_0 may pick either
NEW_TOKENS = 24


@dataclass
class Reference:
    """Transformers' view of each conversation: prompt ids, greedy answer ids and text, and at each answer step
    the lead of the chosen token over the runner-up (logits)."""

    prompts: list[list[int]]
    answer_ids: list[list[int]]
    answers: list[str]
    leads: list[list[float]]


def transformers_answers(folder) -> Reference:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder).eval()
    ref = Reference([], [], [], [])
    for conversation in CONVERSATIONS:
        ids = tok.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            out = lm.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, output_scores=True, return_dict_in_generate=True)
        answer = out.sequences[0][ids.shape[1]:]
        top2 = torch.stack(out.scores)[:, 0].topk(2, dim=-1).values
        ref.prompts.append(ids[0].tolist())
        ref.answer_ids.append(answer.tolist())
        ref.answers.append(tok.decode(answer, skip_special_tokens=True).strip())
        ref.leads.append((top2[:, 0] - top2[:, 1]).tolist())
    return ref


@pytest.fixture(scope="module")
def base_answers(smollm2):
    return transformers_answers(smollm2.path)


@pytest.fixture(scope="module")
def merged(lm_workspace, chat_data, smollm2):
    """SmolLM2 tuned with LoRA for a few short steps on instruct_small's conversations, then merged."""
    from llmkit.train.lora import merge
    from llmkit.train.supervised import sft

    ws = Workspace.open(lm_workspace)
    registry = Registry.for_workspace(ws.root)
    adapter = sft(SftConfig(base="smollm2-135m", data=chat_data, method="lora", lora=LoraConfig(r=8, alpha=16), max_steps=2,
                            batch_size=2, max_length=96, lr=2e-3, eval_every=2, checkpoint_every=2, eval_max_examples=2,
                            seed=0, skip_bad=True, name="smol-chat-lora"), ws, registry)
    return ws, merge(adapter.name, ws, registry)


@pytest.fixture(scope="module")
def merged_answers(merged):
    return transformers_answers(merged[1].path)


def _chat_on_gguf_alone(exported, quant: str, template: str, ref: Reference, whole_answers) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = llama_cpp.Llama(model_path=str(exported.path / f"model-{quant}.gguf"), n_ctx=512, n_threads=2, verbose=False,
                          logits_all=True)
    assert llm.metadata["tokenizer.chat_template"] == template
    assert llm.metadata["tokenizer.ggml.eot_token_id"] == "2"  # <|im_end|>
    # What create_chat_completion sends: the GGUF's own template, rendered, then tokenized by llama.cpp.
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="<|im_start|>")
    for conversation, hf_ids in zip(CONVERSATIONS, ref.prompts, strict=True):
        rendered = formatter(messages=conversation).prompt
        assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == hf_ids
    for i in whole_answers:
        answer = llm.create_chat_completion(messages=CONVERSATIONS[i], temperature=0, max_tokens=NEW_TOKENS)
        assert answer["choices"][0]["message"]["content"].strip() == ref.answers[i], (quant, CONVERSATIONS[i], ref.leads[i])
    _greedy_steps_agree(llm, ref, quant)
    modelfile = (exported.path / "Modelfile").read_text()
    assert "<|im_start|>{{ .Role }}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile


def _greedy_steps_agree(llm, ref: Reference, quant: str) -> None:
    """llama.cpp fed each prompt and transformers' answer picks transformers' token at every step that is not a
    near-tie (at f16, every step). At least a quarter of the steps are checked, so that the check cannot pass by
    finding near-ties everywhere (measured at q8_0: 51 % on the base, 43 % on the briefly tuned model)."""
    import numpy as np

    checked = steps = 0
    for prompt, answer, leads in zip(ref.prompts, ref.answer_ids, ref.leads, strict=True):
        llm.reset()
        llm.eval(prompt + answer[:-1])
        picks = np.asarray(llm.scores[len(prompt) - 1: len(prompt) - 1 + len(answer)]).argmax(-1).tolist()
        clear = [k for k, lead in enumerate(leads) if quant == "f16" or lead >= NEAR_TIE]
        assert [picks[k] for k in clear] == [answer[k] for k in clear], (quant, [(k, leads[k]) for k in clear if picks[k] != answer[k]])
        checked, steps = checked + len(clear), steps + len(answer)
    assert checked >= steps / 4, f"only {checked} of {steps} answer steps are clear of near-ties at {quant}"


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_llama_cpp_chat_on_the_gguf_alone_matches_transformers(smollm2, base_answers, quant, tmp_path):
    pytest.importorskip("llama_cpp")
    ws = Workspace.open(tmp_path / "ws")
    exported, _ = export("smollm2-135m", ExportConfig(quant=quant, table=False), ws, Registry.for_workspace(ws.root))
    template = (smollm2.path / "chat_template.jinja").read_text()
    _chat_on_gguf_alone(exported, quant, template, base_answers, BASE_NOT_NEAR_TIES[quant])
    assert "Paris" in base_answers.answers[0] and "Pacific" in base_answers.answers[3]


def test_merge_keeps_the_base_chat_template(smollm2, merged):
    from safetensors import safe_open

    _, model = merged
    assert chat_template_of(model.path) == chat_template_of(smollm2.path) is not None
    name = "model.layers.0.self_attn.q_proj.weight"
    with safe_open(str(model.path / "model.safetensors"), "pt") as tuned, safe_open(str(smollm2.path / "model.safetensors"), "pt") as base:
        assert (tuned.get_tensor(name) - base.get_tensor(name)).abs().max() > 0  # the adapters were folded in


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_llama_cpp_chat_on_the_merged_gguf_alone_matches_transformers(smollm2, merged, merged_answers, quant):
    pytest.importorskip("llama_cpp")
    ws, model = merged
    exported, _ = export(model.name, ExportConfig(quant=quant, table=False, name=f"smol-chat-merged-{quant}"), ws,
                         Registry.for_workspace(ws.root))
    whole = range(len(CONVERSATIONS)) if quant == "f16" else [i for i, leads in enumerate(merged_answers.leads) if min(leads) >= NEAR_TIE]
    _chat_on_gguf_alone(exported, quant, (smollm2.path / "chat_template.jinja").read_text(), merged_answers, whole)
