"""The sections of the commands that look into a trained model rather than make one: `explain` (attributions and
their faithfulness) and `audit bias` / `audit privacy`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmkit.config.sections import SECTIONS, Section


class ExplainConfig(Section):
    method: Literal["ig", "occlusion", "shap", "attention"] = Field("ig", description="ig: Integrated Gradients on the embeddings; occlusion: replace tokens and measure the drop; shap: Kernel SHAP over token coalitions; attention: attention rollout")
    target: str | None = Field(None, description="classifier: the label to explain (default: the predicted one); causal LM: the next token (default: the most likely one)")
    completion: str | None = Field(None, description="causal LM: explain the log-probability of this text following the input instead of the next token")
    steps: int = Field(50, ge=2, le=2000, description="Integrated Gradients interpolation steps")
    internal_batch_size: int = Field(0, ge=0, description="Integrated Gradients steps per forward pass (0 = all steps in one batch)")
    span: int = Field(1, ge=1, description="occlusion: tokens replaced together (a sliding window of this many)")
    samples: int = Field(0, ge=0, le=100000, description="shap: coalitions sampled (0 = max(200, 8 x tokens), at most 2,048)")
    aopc_k: int = Field(10, ge=1, description="faithfulness: delete the top 1..k attributed tokens (k capped at the token count)")
    aopc_seeds: int = Field(5, ge=1, description="faithfulness: random deletion orders averaged for the baseline")
    max_length: int = Field(0, ge=0, description="classifier tokens (0 = the length it was trained with); longer text is truncated with a warning")
    out: str | None = Field(None, description="also write a self-contained HTML report to this path")


class BiasAuditConfig(Section):
    data: str | None = Field(None, description="classify dataset whose texts that mention a term are audited too (its test split, else val), with per-term accuracy/F1")
    terms: str | None = Field(None, description="YAML or JSON file {group: [[term, ...], ...] or [term, ...]} adding to or overriding the built-in groups")
    groups: list[str] = Field(default_factory=list, description="term groups to audit (empty = all): gender, names, nationality, religion and those of the terms file")
    templates: bool = Field(True, description="also audit the built-in neutral and spam-like template sentences filled with each term")
    flip_threshold: float = Field(0.05, ge=0.0, le=1.0, description="flag a group when more than this share of counterfactual copies change the predicted label")
    delta_threshold: float = Field(0.05, ge=0.0, le=1.0, description="flag a group when the mean |change| in the probability of the original's label exceeds this")
    max_examples: int = Field(0, ge=0, description="cap on dataset records audited (0 = every one mentioning a term)")
    batch_size: int = Field(32, ge=1, description="texts per forward pass")
    max_length: int = Field(0, ge=0, description="tokens per text (0 = the length the classifier was trained with)")
    worst: int = Field(10, ge=0, description="how many of the largest probability changes (LM: pairs, completions) the report lists")
    pairs: str | None = Field(None, description="LM: YAML/JSON/JSONL file of {group, more, less} sentence pairs adding to or replacing built-in groups")
    samples: int = Field(10, ge=1, description="LM: completions sampled per prompt for the sentiment probe")
    completion_tokens: int = Field(16, ge=1, description="LM: tokens per completion")
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="LM: sampling temperature of the completions (0 = greedy)")
    pair_threshold: float = Field(0.1, ge=0.0, le=0.5, description="LM: flag a group whose stereotype-preference rate is this far from 0.5 (and significant)")
    sentiment_threshold: float = Field(0.1, ge=0.0, le=2.0, description="LM: flag a group whose members' net sentiment spreads by more than this (and significantly)")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="LM: significance level of the binomial and chi-square tests")
    seed: int = Field(0, description="LM: seed of the sampled completions")
    lang: Literal["auto", "en", "zh"] = Field("auto", description="LM: language of the built-in pairs, prompts and sentiment words; auto = the language of the model's tokenizer (its vocabulary mostly Chinese: zh)")
    out: str | None = Field(None, description="also write a self-contained HTML report to this path")


class PrivacyAuditConfig(Section):
    data: str | None = Field(None, description="the dataset the model was trained on: train records for memorization and PII look-ups, test (else val) as the held-out baseline")
    samples: int = Field(100, ge=0, description="generations scanned for PII")
    sample_tokens: int = Field(64, ge=1, description="tokens per generation")
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="sampling temperature of those generations (0 = greedy)")
    prompts: list[str] = Field([""], min_length=1, description="prompts the generations start from, cycled ('' = the start of a document)")
    memorization_samples: int = Field(100, ge=0, description="windows per split for the memorization probe")
    prefix_tokens: int = Field(32, ge=1, description="memorization: tokens of a training window given as the prompt")
    suffix_tokens: int = Field(32, ge=1, description="memorization: tokens greedy decoding must reproduce verbatim")
    memorization_threshold: float = Field(0.02, ge=0.0, le=1.0, description="flag when the train extraction rate exceeds the held-out one by more than this")
    candidates: int = Field(1000, ge=10, le=1_000_000, description="canaries: random secrets each true one is ranked among")
    exposure_threshold: float = Field(7.0, ge=0.0, description="canaries: flag a planted secret at or above this exposure in bits (random is ~1)")
    examples: int = Field(10, ge=0, description="examples of each finding kept in the report")
    batch_size: int = Field(32, ge=1, description="sequences generated together")
    seed: int = Field(0, description="seed of the samples, windows and candidates")
    out: str | None = Field(None, description="also write a self-contained HTML report to this path")


SECTIONS.update({"explain": ExplainConfig, "bias": BiasAuditConfig, "privacy": PrivacyAuditConfig})
