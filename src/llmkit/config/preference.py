"""The sections of the preference and reward trainers: `train dpo | orpo | kto` (pairs or rated answers) and
`train grpo` (sampled answers scored by a reward). They share the fine-tuning vocabulary (FinetuneConfig)
with SFT, classification and distillation; their own keys are the loss's."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmkit.config.sections import SECTIONS, FinetuneConfig, LoraConfig


class PreferenceConfig(FinetuneConfig):
    """What DPO, ORPO, KTO and GRPO share: a causal LM base, LoRA or full, the fast path's options."""

    base: str | None = Field(None, description="causal LM to tune: registry name, model folder or Hub id")
    method: Literal["full", "lora"] = Field("lora", description="full: every weight (the reference is the base before the first step: DPO and KTO score it once, GRPO keeps a frozen copy); lora: adapters on a frozen base (the reference is the base, adapters off)")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (method lora)")
    lr: float = Field(5e-5, gt=0.0, le=1.0, description="peak learning rate")
    batch_size: int = Field(4, ge=1, description="pairs (DPO, ORPO), rated answers (KTO) or prompts (GRPO) per micro-batch")
    max_length: int = Field(384, ge=8, description="tokens of prompt plus answer; longer ones keep the prompt's end and the answer's start (counted)")
    beta: float = Field(0.1, gt=0.0, description="DPO/KTO: strength of the pull to the reference (higher: smaller moves); ORPO: weight of the odds-ratio term")
    compile: bool = Field(False, description="torch.compile each transformer block (fast Llama path only; costs a compile at start)")


class DpoConfig(PreferenceConfig):
    sft_weight: float = Field(0.0, ge=0.0, description="weight of a next-token loss on the chosen answers added to DPO's (RPO; TRL's loss_type [sigmoid, sft]): keeps answers fluent when chosen and rejected share most of their text; 0 = plain DPO")


class OrpoConfig(PreferenceConfig):
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="peak learning rate (ORPO also learns the chosen answers, as SFT does)")


class KtoConfig(PreferenceConfig):
    desirable_weight: float = Field(1.0, gt=0.0, description="loss weight of answers labelled desirable (raise it when they are the fewer)")
    undesirable_weight: float = Field(1.0, gt=0.0, description="loss weight of answers labelled undesirable")


class GrpoConfig(PreferenceConfig):
    reward: str | None = Field(None, description="number (the last number of the answer equals the reference answer's), json (the answer is JSON valid against --schema), regex (the answer matches --pattern), length (between --min-chars and --max-chars), or module:function (your (prompt, completion, record) -> float)")
    schema_file: str | None = Field(None, description="reward json: the JSON schema file answers must validate against")
    pattern: str | None = Field(None, description="reward regex: the pattern an answer must match (re.search)")
    min_chars: int = Field(0, ge=0, description="reward length: fewest characters of a rewarded answer")
    max_chars: int = Field(0, ge=0, description="reward length: most characters of a rewarded answer (0 = no limit)")
    group_size: int = Field(8, ge=2, description="answers sampled per prompt; each one's advantage is its reward against its group's")
    max_new_tokens: int = Field(64, ge=1, description="most tokens of a sampled answer")
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="sampling temperature of the answers")
    beta: float = Field(0.04, ge=0.0, description="weight of the KL penalty to the reference (0 = none: no reference forward)")
    clip: float = Field(0.2, gt=0.0, lt=1.0, description="the policy ratio is clipped to 1 +- clip (PPO's trust region)")
    batch_size: int = Field(4, ge=1, description="prompts per step (each sampled group_size times)")
    epochs: float = Field(1.0, gt=0.0, description="passes over the train prompts (ignored when max_steps is set)")
    eval_max_examples: int = Field(32, ge=0, description="val prompts answered greedily at each evaluation (0 = all)")
    samples_logged: int = Field(4, ge=0, description="sampled answers written to the run's samples.jsonl per step")
    max_minutes: float = Field(0.0, ge=0.0, description="time budget: after this many minutes of training the run evaluates and ends, keeping the best weights (0 = none)")


SECTIONS.update({"dpo": DpoConfig, "orpo": OrpoConfig, "kto": KtoConfig, "grpo": GrpoConfig})
