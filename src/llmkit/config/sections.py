"""Every command's configuration section, in one place, as pydantic models: the keys, their defaults,
their ranges and their descriptions (which are also the CLI flags' help)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PositiveInt,
    field_validator,
    model_validator,
)

from llmkit.config.base import Section
from llmkit.config.llama_fields import check_llama_fields


class WorkspaceConfig(Section):
    db_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the registry; empty means a SQLite file in the workspace "
        "(e.g. postgresql+psycopg://user@host/llmkit for a team)",
    )


class SplitConfig(Section):
    val: float = Field(0.05, ge=0.0, lt=1.0, description="fraction of records in the val split")
    test: float = Field(0.05, ge=0.0, lt=1.0, description="fraction of records in the test split")
    seed: int = Field(0, description="seed mixed into the content hash that assigns each record a split")

    @model_validator(mode="after")
    def _room_for_train(self):
        if self.val + self.test >= 1.0:  # every record would land in val or test
            raise ValueError(f"val + test = {self.val + self.test:g}: together they must stay below 1, since train takes "
                             "the rest; lower one of them")
        return self


class DataConfig(Section):
    inputs: list[str] = Field(default_factory=list, description="files, folders or globs to ingest (.txt .jsonl .json .csv .tsv .parquet, optionally .gz)")

    @field_validator("inputs", "include", "exclude", mode="before")
    @classmethod
    def _one_is_a_list_of_one(cls, v):  # `inputs: data.txt` in a config file means [data.txt]
        return [v] if isinstance(v, str) else v

    include: list[str] = Field(default_factory=list, description="read only the files of folders and globs whose name or path matches one of these globs; also reads licence and readme files, which are skipped by default")
    exclude: list[str] = Field(default_factory=list, description="skip the files whose name or path matches one of these globs (wins over include)")
    name: str | None = Field(None, description="dataset name in the registry; the same name with new content becomes its next version")
    task: Literal["lm", "chat", "classify", "preference"] = Field("lm", description="lm: plain documents; chat: conversations; classify: text with a label; preference: prompt with chosen and rejected answers, or with a completion labelled true|false (KTO)")
    text_field: str | None = Field(None, description="field or column holding the text (default: text, content, or the first string column)")
    label_field: str | None = Field(None, description="field or column holding the label (classify; default: label)")
    doc_split: Literal["file", "blank-line", "line"] = Field("file", description="how .txt files split into documents for lm")
    encoding: str = Field("utf-8", description="text encoding of the input files")
    chunk_chars: int = Field(8000, ge=0, description="lm documents longer than this are cut at line breaks into pieces of about this size, so one big file still splits and dedupes (0 = never)")
    tokenizer: str = Field("bpe:4096", description="char | bpe:VOCAB | path of a tokenizer.json or model folder to reuse")
    pii: Literal["redact", "drop", "report", "keep"] = Field("redact", description="redact: typed placeholders; drop: remove the record; report: count only; keep: skip detection")
    dedupe: Literal["near", "exact", "none"] = Field("near", description="near: MinHash LSH plus exact; exact: normalized-text hash; none")
    near_threshold: float = Field(0.85, gt=0.0, le=1.0, description="Jaccard similarity above which two records count as near-duplicates")
    min_chars: int = Field(1, ge=0, description="records shorter than this after cleaning are dropped")
    max_chars: int = Field(1_000_000, ge=1, description="records longer than this after cleaning are dropped")
    splits: SplitConfig = Field(default_factory=SplitConfig, description="train/val/test assignment")
    skip_bad: bool = Field(False, description="skip and count malformed records instead of stopping at the first")


class FeedbackDataConfig(Section):
    name: str | None = Field(None, description="name of the chat dataset to register; new feedback under the same name becomes its next version")
    task: Literal["chat", "preference"] = Field("chat", description="chat: conversations for 'train sft'; preference: a correction chosen over the answer it corrects, a thumbs-up over a thumbs-down to the same prompt, lone ratings as KTO records (desirable: rating >= min_rating), for 'train dpo|orpo|kto'")
    model: str | None = Field(None, description="only feedback on this served model (its name as served); empty = every model")
    min_rating: int = Field(1, ge=-1, le=1, description="a rating at or above this approves the response as it is (thumbs up = 1, thumbs down = -1)")
    include_corrections: bool = Field(True, description="turn corrected answers into training replies; a correction wins over the rating, even a thumbs-down")
    tokenizer: str | None = Field(None, description="char | bpe:VOCAB | tokenizer path; empty = the model's own when model is a registered model, else char")
    since: str | None = Field(None, description="only feedback given at or after this ISO date or time (UTC unless it carries an offset)")
    val: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of conversations held out for val (sft evaluates on it); 0 when a tiny set would leave train empty")

class PretrainConfig(Section):
    data: str | None = Field(None, description="registry name of an lm dataset (llmkit data prepare --task lm)")
    preset: Literal["nano", "micro", "small", "base"] = Field("nano", description="model size at a 4,096-token vocabulary: nano ~1.4M, micro ~11M, small ~48M, base ~126M parameters")
    model: Annotated[dict[str, Any], AfterValidator(check_llama_fields)] = Field(default_factory=dict, description="overrides of any LlamaConfig field, e.g. {num_hidden_layers: 2}")
    name: str | None = Field(None, description="name of the model in the registry (default: <data>-<preset>)")
    resume: str | None = Field(None, description="run id, run name, run folder or its name under runs/ to continue from its last checkpoint")
    max_steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    context: int = Field(128, ge=2, description="tokens per training sequence")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="peak learning rate")
    min_lr: float = Field(1e-4, ge=0.0, description="learning rate at the end of the cosine decay")
    warmup_steps: int = Field(50, ge=0, description="linear warm-up steps")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW weight decay (never on norms and biases)")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1")
    beta2: float = Field(0.99, ge=0.0, lt=1.0, description="AdamW beta2")
    grad_clip: float = Field(1.0, ge=0.0, description="clip the gradient norm to this (0 = off)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="attention dropout")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 autocast on GPUs and on CPUs with AMX/AVX512-BF16, else fp32")
    compile: bool = Field(False, description="torch.compile the model")
    seed: int = Field(1337, description="seed for weights, batches and dropout")
    eval_every: int = Field(200, ge=1, description="evaluate on the whole val split every N steps")
    eval_max_batches: int = Field(0, ge=0, description="cap on val batches per evaluation (0 = the whole split)")
    early_stopping: int = Field(0, ge=0, description="stop after this many evaluations without improvement (0 = off)")
    checkpoint_every: int = Field(200, ge=1, description="write a resumable checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="how many recent checkpoints to keep")
    log: Literal["none", "tensorboard", "mlflow"] = Field("none", description="extra metrics sink, when installed")
    fsdp: bool = Field(False, description="shard with FSDP2 under torchrun (GPU)")
    canaries: int = Field(0, ge=0, le=10000, description="plant this many random secrets in the training data for 'llmkit audit privacy' (0 = none)")
    canary_repeats: list[PositiveInt] = Field([1, 10, 100], min_length=1, description="times each canary is planted, cycling over the canaries")


class LoraConfig(Section):
    r: int = Field(8, ge=1, description="LoRA rank: size of the low-rank update")
    alpha: float = Field(16.0, gt=0.0, description="LoRA scaling numerator (the update is scaled by alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input (above 0 it costs a copy of every adapted layer's input)")
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"], description="module names to adapt, e.g. [q_proj, v_proj]; all-linear = every linear layer but the output head")


class FinetuneConfig(Section):
    """What SFT, classification and distillation share: the base, the data, the loop."""

    data: str | None = Field(None, description="registry name of the dataset to train on")
    name: str | None = Field(None, description="name of the trained model in the registry (default: <base>-<data>-<stage>; classify: <base>-<data>-classifier, distill: <teacher>-student)")
    resume: str | None = Field(None, description="run id, run name, run folder or its name under runs/ to continue from its last checkpoint")
    epochs: float = Field(1.0, gt=0.0, description="passes over the train split (ignored when max_steps is set)")
    max_steps: int = Field(0, ge=0, description="optimizer steps (0 = as many as the epochs take)")
    batch_size: int = Field(16, ge=1, description="examples per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_length: int = Field(256, ge=8, description="tokens per example; longer examples are truncated (counted)")
    lr: float = Field(5e-5, gt=0.0, le=1.0, description="peak learning rate")
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0, description="fraction of the steps spent warming up linearly")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay (never on norms and biases)")
    grad_clip: float = Field(1.0, ge=0.0, description="clip the gradient norm to this (0 = off)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 autocast on GPUs and on CPUs with AMX/AVX512-BF16, else fp32")
    seed: int = Field(1337, description="seed for new weights (a classification head, LoRA adapters), batch order and dropout")
    eval_every: int = Field(0, ge=0, description="evaluate every N steps (0 = at the end of each epoch)")
    eval_max_examples: int = Field(0, ge=0, description="cap on val examples per evaluation (0 = the whole split)")
    checkpoint_every: int = Field(200, ge=1, description="write a resumable checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="how many recent checkpoints to keep")
    skip_bad: bool = Field(False, description="skip and count unusable examples instead of stopping at the first")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass: less memory, about a third more time")
    log: Literal["none", "tensorboard", "mlflow"] = Field("none", description="extra metrics sink, when installed")


class SftConfig(FinetuneConfig):
    base: str | None = Field(None, description="causal LM to fine-tune: registry name, model folder or Hub id")
    method: Literal["full", "lora", "qlora"] = Field("lora", description="full: every weight; lora: adapters on a frozen base; qlora: adapters on a 4-bit base (CUDA)")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (method lora/qlora)")
    lr: float = Field(2e-4, gt=0.0, le=1.0, description="peak learning rate")
    packing: bool = Field(False, description="pack several conversations into each max_length row (no padding; attention stays inside each conversation)")
    compile: bool | Literal["auto"] = Field("auto", description="torch.compile each transformer block (fast Llama path only; costs a compile at start). auto: when the run is long enough to repay it (CPU, bf16, --packing, 200 steps or more, 50M parameters or more, a C++ compiler)")
    lean_memory: bool = Field(False, description="return freed large tensors to the OS at once: lower peak RSS, slower steps on CPU (glibc)")


class ClassifyConfig(FinetuneConfig):
    base: str | None = Field("minilm-l6", description="encoder or decoder to fine-tune: minilm-l6 (built in), registry name, model folder or Hub id")
    method: Literal["full", "lora"] = Field("full", description="full: every weight; lora: adapters plus the classification head")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (method lora)")
    class_weights: Literal["auto", "none"] = Field("auto", description="auto: weigh the loss by inverse class frequency")
    max_length: int = Field(128, ge=8, description="tokens per text; longer texts are truncated (counted)")
    epochs: float = Field(3.0, gt=0.0, description="passes over the train split (ignored when max_steps is set)")


class DistillConfig(FinetuneConfig):
    teacher: str | None = Field(None, description="the trained model to imitate: registry name or model folder")
    student: str | None = Field(None, description="an existing smaller model sharing the teacher's tokenizer")
    student_preset: Literal["nano", "micro", "small", "base"] | None = Field(None, description="build a new student of this size from the teacher's config instead")
    student_layers: int = Field(0, ge=0, description="with student_preset, override the number of layers (0 = the preset's)")
    temperature: float = Field(2.0, gt=0.0, description="softens both distributions before the KL term")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="weight of the KL term; 1 - alpha goes to the hard-label / next-token loss")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="peak learning rate")
    epochs: float = Field(3.0, gt=0.0, description="passes over the train split (ignored when max_steps is set)")


class PredictConfig(Section):
    batch_size: int = Field(32, ge=1, description="texts per forward pass")
    max_length: int = Field(0, ge=0, description="tokens per text (0 = the length the classifier was trained with)")


class EvalConfig(Section):
    data: str | None = Field(None, description="registry dataset to evaluate on, or a .jsonl file of {prompt, reference} for generation metrics")
    split: str = Field("test", description="dataset split: train | val | test")
    metrics: list[str] = Field(default_factory=list, description="metrics to compute (empty = every one that fits the model): perplexity, bits_per_byte, exact_match, rougeL, bleu, accuracy, precision, recall, f1, roc_auc, ece")
    context: int = Field(0, ge=0, description="tokens per perplexity window (0 = the model's context)")
    stride: int = Field(0, ge=0, description="tokens between window starts (0 = context: non-overlapping windows)")
    source: Literal["text", "shards"] = Field("text", description="text: tokenize the split's records with the model's tokenizer; shards: the dataset's token shards (tokenizers must match)")
    batch_size: int = Field(8, ge=1, description="windows or texts per forward pass")
    max_examples: int = Field(0, ge=0, description="cap on evaluated records (0 = the whole split)")
    max_new_tokens: int = Field(64, ge=1, description="generation metrics: greedy tokens per prompt")
    chat: bool = Field(False, description="generation metrics on a .jsonl file: render each prompt as a user turn with the model's chat template")
    harness: str | None = Field(None, description="lm-eval task names, comma-separated (needs the lm-eval package)")
    harness_include: str | None = Field(None, description="folder of local lm-eval task YAML files")
    harness_limit: int = Field(0, ge=0, description="lm-eval: examples per task (0 = all)")
    out: str | None = Field(None, description="also write the HTML report to this path")


class CompareConfig(Section):
    data: str | None = Field(None, description="dataset to compare on; with two models (BASE TUNED) the gate scores both on its held-out split")
    split: str | None = Field(None, description="split to score (empty = test when it has records, else val)")
    gate: bool = Field(True, description="with two models and data: score both item by item, run the general check, list the items whose outcome flipped and give a verdict (exit 1 when it fails)")
    general: bool = Field(True, description="gate: also run the general-ability check shipped with llmkit (perplexity on English prose, instructions with reference answers; causal LMs)")
    max_items: int = Field(200, ge=0, description="gate: items of the split scored, the first ones (0 = all)")
    max_new_tokens: int = Field(64, ge=1, description="gate, chat data: greedy tokens per reply")
    item_pass_score: float = Field(0.3, ge=0.0, le=1.0, description="gate, chat data: a reply passes when its ROUGE-L F1 against the reference reaches this")
    item_loss_margin: float = Field(0.05, ge=0.0, description="gate, lm data: an item flips when its loss per token moves by more than this (nats)")
    min_task_improvement: float = Field(0.0, ge=-1.0, le=1.0, description="gate: how much better TUNED must score than BASE: accuracy (classify) or mean ROUGE-L (chat) points, relative perplexity decrease (lm); negative tolerates a small loss")
    max_regressed_share: float = Field(0.1, ge=0.0, le=1.0, description="gate: largest share of the items that may go from pass to fail")
    max_regressed_items: int | None = Field(None, ge=0, description="gate: most items that may go from pass to fail (empty = no count limit)")
    max_general_perplexity_increase: float = Field(0.05, ge=0.0, description="gate: largest relative rise of the general English perplexity (0.05 = 5 %)")
    max_general_answer_drop: float = Field(0.1, ge=0.0, le=1.0, description="gate: largest fall in the share of general instructions answered correctly")
    examples: int = Field(5, ge=0, description="gate: flipped items shown for each direction")

# One spelling per backend; older spellings are read as these (config files, --backend).
BACKEND_ALIASES = {"llamacpp": "llama.cpp", "llama_cpp": "llama.cpp"}
_one_spelling = BeforeValidator(lambda v: BACKEND_ALIASES.get(v, v) if isinstance(v, str) else v)
Backend = Annotated[Literal["auto", "torch", "llama.cpp", "onnx"], _one_spelling]
# Benchmarks take any registered backend (`llmkit.runtime.backends.register_backend`), checked when loaded.
AnyBackend = Annotated[str, _one_spelling]


class BenchModelConfig(Section):
    backend: AnyBackend = Field("auto", description="what runs the model: auto = llama.cpp for GGUF exports, onnxruntime "
                                                 "for ONNX exports, else PyTorch; or torch | llama.cpp | onnx")
    prompt_tokens: int = Field(128, ge=1, description="prompt length")
    new_tokens: int = Field(64, ge=1, description="tokens generated per run")
    runs: int = Field(5, ge=1, description="timed runs (p50/p95 over these)")
    warmup: int = Field(1, ge=0, description="untimed runs first")


class ExportConfig(Section):
    format: Literal["gguf", "onnx"] = Field("gguf", description="gguf: llama.cpp / Ollama; onnx: onnxruntime")
    quant: Literal["f32", "f16", "q8_0", "q4_0"] = Field("q8_0", description="GGUF weight type (norms stay f32); ONNX: f32 unless given, or q8_0 (onnxruntime's dynamic int8: int8 weights, activations rounded per batch)")
    name: str | None = Field(None, description="registry name of the export (default: <model>-<quant> for GGUF; <model>-onnx or <model>-onnx-int8 for ONNX)")
    table: bool = Field(True, description="measure size, perplexity on the model's val split and decode speed before and after")
    eval_max_examples: int = Field(200, ge=0, description="val records the before/after perplexity uses (0 = all)")
    eval_data: str | None = Field(None, description="dataset the before/after table measures quality on, its val split (default: the one the model was trained on; a built-in or imported model has none)")


class QuantizeConfig(Section):
    method: Literal["int8-dynamic", "int8-weight", "int4-weight"] = Field("int8-weight", description="int8-weight / int4-weight: weights in int8/int4 codes per group (int8 keeps a pretrained LM within 0.1 % perplexity; on AVX2 CPUs int8 in groups of 32/64/128 runs on llmkit's block kernel, activations rounded to int8 per block of 32 as llama.cpp's q8_0 does); int8-dynamic: int8 activations too (fbgemm int8 matmuls, fastest at batch 1, but coarse where a pretrained LM has outlier features: +9.7 % perplexity on SmolLM2-135M)")
    group_size: int = Field(64, ge=8, description="input weights sharing one scale (weight-only methods): 32, 64 or 128")
    name: str | None = Field(None, description="registry name of the quantized model (default: <model>-<method>)")
    table: bool = Field(True, description="measure size, perplexity and decode speed before and after")
    eval_max_examples: int = Field(200, ge=0, description="val records the before/after perplexity uses (0 = all)")
    eval_data: str | None = Field(None, description="dataset the before/after table measures quality on, its val split (default: the one the model was trained on; a built-in or imported model has none)")


class PruneConfig(Section):
    method: Literal["magnitude", "wanda"] = Field("magnitude", description="magnitude: smallest |W|; wanda: smallest |W| x input-activation norm (needs calib_data)")
    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of each linear layer's weights set to zero (2:4 is always 0.5)")
    pattern: Literal["unstructured", "2:4"] = Field("unstructured", description="unstructured, or 2 zeros in every 4 consecutive input weights")
    calib_data: str | None = Field(None, description="dataset whose train texts give Wanda's activations and the recovery steps")
    calib_samples: int = Field(64, ge=1, description="calibration windows")
    calib_context: int = Field(0, ge=0, description="tokens per calibration window (0 = the model's context)")
    recover_steps: int = Field(0, ge=0, description="fine-tuning steps after pruning, zeros kept (needs calib_data)")
    recover_lr: float = Field(1e-4, gt=0.0, description="learning rate of the recovery steps")
    name: str | None = Field(None, description="registry name of the pruned model (default: <model>-<method>-<sparsity %>, or <model>-<method>-2of4)")
    table: bool = Field(True, description="measure size, perplexity and decode speed before and after")
    eval_max_examples: int = Field(200, ge=0, description="val records the before/after perplexity uses (0 = all)")
    eval_data: str | None = Field(None, description="dataset the before/after table measures quality on, its val split (default: the one the model was trained on; a built-in or imported model has none)")


class GenerateConfig(Section):
    max_new_tokens: int = Field(100, ge=1, description="tokens to generate")
    temperature: float = Field(0.8, ge=0.0, le=10.0, description="sampling temperature (0 = greedy)")
    top_k: int = Field(0, ge=0, description="sample from the k most likely tokens (0 = off)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (1 = off)")
    repetition_penalty: float = Field(1.0, gt=0.0, description="> 1 discourages repeating tokens (1 = off)")
    stop: list[str] = Field(default_factory=list, description="strings that end the generation")
    seed: int | None = Field(None, description="seed for sampling (default: random)")


class ServeConfig(Section):
    models: list[str] = Field(default_factory=list, description="models to serve: registry names, folders or built-ins")
    backend: Backend = Field("auto", description="auto = llama.cpp for GGUF exports, onnxruntime for ONNX exports, "
                                                 "else PyTorch; or torch | llama.cpp | onnx")
    host: str = Field("127.0.0.1", description="address to bind; 0.0.0.0 exposes the server to the network")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port)")
    api_keys: list[str] = Field(default_factory=list, description="Bearer keys clients must send (none = open)")
    api_keys_file: str | None = Field(None, description="file with one API key per line (# comments allowed)")
    admin_keys: list[str] = Field(default_factory=list, description="Bearer keys for the admin routes (POST/DELETE "
                                  "/v1/adapters); none = adapters are fixed at start")
    admin_keys_file: str | None = Field(None, description="file with one admin key per line (# comments allowed); "
                                        "$LLMKIT_ADMIN_KEY works too: keys off the command line, out of ps")
    adapters: list[str] = Field(default_factory=list, description="LoRA adapters served on their base (NAME=ADAPTER or "
                                "ADAPTER): one batch for the base and all its adapters, each row its own delta")
    max_batch: int = Field(16, ge=1, le=512, description="sequences decoded together per step (torch and llama.cpp backends)")
    max_queue: int = Field(256, ge=1, description="requests waiting beyond the batch; more get 429")
    workers: int = Field(0, ge=0, le=64, description="decode workers per model: torch batches decoded in parallel (sharing "
                         "the weights), llama.cpp contexts of --max-batch sequences each, ONNX instances of one sequence each; "
                         "0 = 2 for torch on 2+ cores, else 1")
    threads: int = Field(0, ge=0, description="compute threads per worker (0 = (cores - 1) / 2, at least 1: one core stays for HTTP)")
    max_tokens: int = Field(2048, ge=1, description="the most tokens one request may ask for")
    max_context: int = Field(0, ge=0, description="the longest sequence (prompt + answer) served per model: caps the "
                             "models' own context, and the KV cache memory with it (0 = each model's own)")
    max_n: int = Field(8, ge=1, le=256, description="the most choices (`n`) one completion request may ask for; they share "
                       "one prefill and one worker's batch, so at most --max-batch")
    prefix_cache_mb: int = Field(256, ge=0, description="MiB per model for K/V of prompt prefixes already computed "
                                 "(a shared system prompt is prefilled once; torch backend, Llama family); 0 = off")
    timeout: float = Field(300.0, gt=0.0, description="seconds a request may take, queueing included")
    shutdown_timeout: float = Field(30.0, ge=0.0, description="on SIGTERM or Ctrl-C: seconds the requests in flight get to "
                                    "finish (new ones get 503 and /health says draining) before the rest are stopped; a "
                                    "second signal stops at once")
    explain_max_tokens: int = Field(256, ge=1, description="/v1/explain: the most tokens one explanation may feed the "
                                    "model (input plus completion); more get 400")
    explain_max_work: int = Field(20_000, ge=1, description="/v1/explain: the most token positions one attribution may run "
                                  "through the model (IG steps x tokens, occlusion windows x tokens, SHAP coalitions x tokens); more get 400")
    explain_batch_tokens: int = Field(2048, ge=1, description="/v1/explain: token positions per forward pass (IG steps, "
                                      "occlusion windows and SHAP coalitions are chunked to fit); bounds peak memory")
    explain_queue: int = Field(4, ge=1, description="/v1/explain: explanations running or waiting at once; more get 429")
    rate_limit: int = Field(0, ge=0, description="requests per minute per API key (or per client address when open); 0 = off")
    max_body_kb: int = Field(1024, ge=1, description="largest request body accepted, in KiB")
    cors_origins: list[str] = Field(default_factory=list, description="origins allowed to call the API from a browser (none = CORS off)")
    trusted_proxies: list[str] = Field(default_factory=list, description="addresses or networks (10.0.0.0/8) of reverse "
                                       "proxies whose X-Forwarded-For names the client: its address then counts for the "
                                       "wrong-key throttle, --rate-limit without keys and the access log; none = trust no proxy")
    allowed_hosts: list[str] = Field(default_factory=list, description="Host names the server answers besides localhost, 127.0.0.1, [::1] and the bound address (against DNS rebinding); * = any; bound to 0.0.0.0 or :: with none given, any is accepted")
    log_requests: bool = Field(False, description="store prompts and responses in the registry (for llmkit data from-feedback)")
    access_log: bool = Field(False, description="print one line per HTTP request on stdout: UTC time, client, method, path, status, milliseconds to the response (never a query string, a body or a key)")
    ui: bool = Field(True, description="serve the web UI and dashboard at /")


class DemoConfig(Section):
    act: Literal["scratch", "real", "both"] = Field("both", description="scratch: a small model from nothing; real: the built-in smollm2-135m tuned with LoRA, compared and exported; both: one then the other")
    data: str | None = Field(None, description="scratch act: text file or folder to train on (default: the Python standard library's source); given as a flag without --act, only the scratch act runs")
    minutes: float = Field(3.0, gt=0.0, description="scratch act: training time budget")
    chat_data: str | None = Field(None, description="real act: instruction set to tune on (default: $LLMKIT_DEMO_CHAT_DATA or ../shared/data/instruct_small)")
    real_minutes: float = Field(2.0, gt=0.0, description="real act: LoRA tuning time budget")
    serve: bool = Field(True, description="end by serving the demo model with the web UI (Ctrl-C stops)")
    port: int = Field(8000, ge=0, le=65535, description="port of that server (another free one if taken)")


SECTIONS: dict[str, type[Section]] = {
    "workspace": WorkspaceConfig,
    "data": DataConfig,
    "from-feedback": FeedbackDataConfig,
    "pretrain": PretrainConfig,
    "sft": SftConfig,
    "classify": ClassifyConfig,
    "distill": DistillConfig,
    "predict": PredictConfig,
    "eval": EvalConfig,
    "compare": CompareConfig,
    "bench-model": BenchModelConfig,
    "export": ExportConfig,
    "prune": PruneConfig,
    "quantize": QuantizeConfig,
    "generate": GenerateConfig,
    "serve": ServeConfig,
    "demo": DemoConfig,
}
