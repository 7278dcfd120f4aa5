"""The section of `llmkit tune` and the default search spaces of the stages it tunes (every trainer's section
is defined before this one: sections.py, preference.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from llmkit.config.sections import SECTIONS, Section


# Search spaces `llmkit tune` uses when no --space file is given: one field per config key of the stage
# (a nested section nests), each {float|log-float|int: [low, high]} or {categorical: [choices]}. Ranges that
# suit small data on a CPU; a key absent here keeps the stage's own default. Extra keys are allowed: a
# config file's `tune: {spaces: {classify: {...}}}` may search any key of the stage.
def _space(kind: str, bounds: list, description: str):
    return Field(default_factory=lambda: {kind: list(bounds)}, description=description)


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)


class PretrainSpace(SearchSpace):
    lr: dict[str, list] = _space("log-float", [3e-4, 3e-3], "peak learning rate")
    warmup_steps: dict[str, list] = _space("int", [0, 100], "linear warm-up steps")
    weight_decay: dict[str, list] = _space("float", [0.0, 0.2], "AdamW weight decay")
    batch_size: dict[str, list] = _space("categorical", [8, 16, 32], "sequences per micro-batch")


class LoraSpace(SearchSpace):
    r: dict[str, list] = _space("categorical", [4, 8, 16], "LoRA rank")
    alpha: dict[str, list] = _space("categorical", [8.0, 16.0, 32.0], "LoRA scaling numerator")


class SftSpace(SearchSpace):
    lr: dict[str, list] = _space("log-float", [5e-5, 1e-3], "peak learning rate")
    lora: LoraSpace = Field(default_factory=LoraSpace, description="LoRA settings")
    warmup_ratio: dict[str, list] = _space("float", [0.0, 0.1], "fraction of the steps spent warming up")
    epochs: dict[str, list] = _space("int", [1, 3], "passes over the train split")


class ClassifySpace(SearchSpace):
    lr: dict[str, list] = _space("log-float", [1e-5, 3e-4], "peak learning rate")
    batch_size: dict[str, list] = _space("categorical", [8, 16, 32], "examples per micro-batch")
    weight_decay: dict[str, list] = _space("float", [0.0, 0.1], "AdamW weight decay")
    warmup_ratio: dict[str, list] = _space("float", [0.0, 0.2], "fraction of the steps spent warming up")
    epochs: dict[str, list] = _space("int", [1, 4], "passes over the train split")


class PreferenceSpace(SearchSpace):
    lr: dict[str, list] = _space("log-float", [1e-5, 5e-4], "peak learning rate")
    beta: dict[str, list] = _space("float", [0.05, 0.5], "pull to the reference (DPO, KTO) or odds-ratio weight (ORPO)")
    lora: LoraSpace = Field(default_factory=LoraSpace, description="LoRA settings")


class KtoSpace(SearchSpace):
    # no beta: KTO's loss and reward margin scale with it, and they are all it reports (see tune.trials.DEFAULT_METRIC)
    lr: dict[str, list] = _space("log-float", [1e-5, 5e-4], "peak learning rate")
    lora: LoraSpace = Field(default_factory=LoraSpace, description="LoRA settings")


class GrpoSpace(SearchSpace):
    lr: dict[str, list] = _space("log-float", [1e-5, 5e-4], "peak learning rate")
    beta: dict[str, list] = _space("float", [0.0, 0.1], "weight of the KL penalty to the reference")
    group_size: dict[str, list] = _space("categorical", [4, 8], "answers sampled per prompt")


class TuneSpacesConfig(Section):
    pretrain: PretrainSpace = Field(default_factory=PretrainSpace, description="search space of `llmkit tune pretrain` without --space")
    sft: SftSpace = Field(default_factory=SftSpace, description="search space of `llmkit tune sft` without --space")
    classify: ClassifySpace = Field(default_factory=ClassifySpace, description="search space of `llmkit tune classify` without --space")
    dpo: PreferenceSpace = Field(default_factory=PreferenceSpace, description="search space of `llmkit tune dpo` without --space")
    orpo: PreferenceSpace = Field(default_factory=PreferenceSpace, description="search space of `llmkit tune orpo` without --space")
    kto: KtoSpace = Field(default_factory=KtoSpace, description="search space of `llmkit tune kto` without --space")
    grpo: GrpoSpace = Field(default_factory=GrpoSpace, description="search space of `llmkit tune grpo` without --space")


def duration_s(text: str) -> float:
    """'90s', '30m', '1.5h' or a plain number of seconds, in seconds."""
    text = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:])
    try:
        seconds = float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        raise ValueError("a duration is a number of seconds or one like 90s, 30m, 2h") from None
    if not seconds > 0:
        raise ValueError("a duration must be more than 0 seconds")
    return seconds


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        duration_s(value)  # kept as written (the flag reads '30m'); checked here
    return value


class TuneConfig(Section):
    stage: Literal["pretrain", "sft", "classify", "dpo", "orpo", "kto", "grpo"] = Field("classify", description="the stage whose config is searched")
    data: str | None = Field(None, description="registry name of the dataset every trial trains on")
    base: str | None = Field(None, description="the model every stage but pretrain starts from (default: the stage's own default)")
    space: str | None = Field(None, description="YAML search space: each config key of the stage mapped to a float, log-float or int range (low, high) or to categorical choices; empty = the stage's default space (llmkit config show tune)")
    trials: int = Field(20, ge=1, description="trials in the study, counted over every process working on it")
    timeout: Annotated[str | None, BeforeValidator(_duration)] = Field(None, description="time budget (90s, 30m, 2h): no trial starts after it, a running one is stopped at its next step and counted as pruned")
    metric: str | None = Field(None, description="evaluation metric to optimise (default: the stage's: val_loss for pretrain, sft and kto, val_reward_accuracy for dpo and orpo (their loss moves with beta), val_macro_f1 for classify, val_reward for grpo)")
    direction: Literal["max", "min"] | None = Field(None, description="max or min (default: min for losses and perplexities, else max)")
    study: str | None = Field(None, description="study name: the same name and storage continue one study, from any number of processes or machines (default: tune-<stage>-<data>)")
    storage: str | None = Field(None, description="SQLAlchemy URL of the Optuna storage (default: the registry's database; PostgreSQL for several machines)")
    workers: int = Field(1, ge=1, le=64, description="trial processes on this machine, the cores split between them")
    pruner: Literal["median", "hyperband", "none"] = Field("median", description="stop poor trials early from their evaluations: median (below the median of earlier trials at the same evaluation), hyperband, or none")
    startup_trials: int = Field(1, ge=0, description="trials completed before the median pruner prunes anything (1: the first, the config as given under defaults_first, is the bar every later trial must keep up with at each evaluation)")
    defaults_first: bool = Field(True, description="a new study's first trial runs the stage's config as given (where the space holds its values): the best trial is never worse than not tuning")
    keep_trials: bool = Field(False, description="keep every trial's weights (default: only the best trial's model is kept)")
    heartbeat: int = Field(10, ge=1, description="seconds between a running trial's heartbeats; a trial silent for two is marked failed (its worker died)")
    seed: int = Field(0, description="seed of the TPE sampler (each local worker adds its index)")
    spaces: TuneSpacesConfig = Field(default_factory=TuneSpacesConfig, description="default search spaces per stage")


SECTIONS["tune"] = TuneConfig
