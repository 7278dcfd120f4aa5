"""The deliberate breakages `tests/mutants.py` applies, one exact string replacement each, with the
tests that must catch them. Grouped by stage; add one whenever a test is written to catch a bug a
rewrite could bring back. `old` must occur exactly once in `file` (the runner says when it no longer does).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    stage: str
    file: str  # relative to the repo root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids or files; at least one must fail
    why: str = ""


PII = "tests/data/test_pii.py"
DEDUPE = "tests/data/test_dedupe.py"
LM_EVAL = "tests/eval/test_lm_eval.py"
GENERATE = "tests/test_generate.py"
REGISTRY_CLI = "tests/cli/test_registry_url_cli.py"
STREAMS64 = "tests/serve/test_limits.py::test_64_concurrent_streams_each_equal_their_solo_answer_and_are_batched"
OPTIONS = "tests/serve/test_options.py"
T_Q = "tests/optimize/test_quantize.py::test_each_method_quantizes_every_linear_layer_but_the_head_and_loads_back_close_to_the_original"
T_W = "tests/optimize/test_prune.py::test_wanda_zeros_the_smallest_weight_times_input_norm_of_each_row_and_recovery_keeps_the_zeros"
T_M = "tests/optimize/test_prune.py::test_magnitude_pruning_zeroes_the_smallest_half_of_every_linear_layer_and_nothing_else"
T_O = "tests/optimize/test_onnx.py::test_a_parity_failure_writes_nothing_registers_nothing_and_says_so_in_one_line"
QUANT = "src/llmkit/optimize/quantize.py"
QFORMAT = "src/llmkit/models/quantized.py"
PRUNE = "src/llmkit/optimize/prune.py"
ONNX = "src/llmkit/optimize/export_onnx.py"

MUTANTS: list[Mutant] = [
    # -- data -------------------------------------------------------------------------------------
    Mutant("luhn-always-passes", "data", "src/llmkit/data/pii_checks.py",
           "    return total % 10 == 0", "    return True",
           (f"{PII}::test_luhn", f"{PII}::test_card_needs_luhn_brand_and_length"),
           "the card checksum is what keeps order numbers from being redacted"),
    Mutant("near-duplicates-ignore-the-threshold", "data", "src/llmkit/data/dedupe.py",
           ">= self.threshold).any()", ">= 0.0).any()",
           (f"{DEDUPE}::test_index_checks_candidates_against_the_threshold",),
           "LSH candidates are only candidates: each must be checked against the threshold"),
    Mutant("exact-key-is-case-sensitive", "data", "src/llmkit/data/dedupe.py",
           'folded = " ".join(text.lower().split())', 'folded = " ".join(text.split())',
           (f"{DEDUPE}::test_exact_key_ignores_case_and_whitespace_only",
            f"{DEDUPE}::test_exact_keys_of_a_batch_equal_those_of_each_text")),
    # -- eval -------------------------------------------------------------------------------------
    Mutant("perplexity-window-off-by-one", "eval", "src/llmkit/eval/lm.py",
           "        scored_until = start + length\n", "        scored_until = start + length + 1\n",
           (f"{LM_EVAL}::test_perplexity_equals_an_independent_computation",
            f"{LM_EVAL}::test_overlapping_windows_score_every_token_exactly_once"),
           "a token scored twice or never changes the perplexity a little: only an exact check sees it"),
    # -- generate ---------------------------------------------------------------------------------
    Mutant("stop-strings-ignored", "generate", "src/llmkit/runtime/detokenize.py",
           "hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]", "hits = []",
           (f"{GENERATE}::test_stop_strings_and_streaming",)),
    Mutant("eos-does-not-stop", "generate", "src/llmkit/generate.py",
           "if tok in eos or stream.stopped:", "if stream.stopped:",
           (f"{GENERATE}::test_eos_stops",)),
    # -- optimize ---------------------------------------------------------------------------------
    Mutant("int8-dynamic-loads-weight-only", "optimize", QFORMAT,
           'zero_point, dynamic=info["method"] == "int8-dynamic"))', "zero_point))", (f"{T_Q}[int8-dynamic]",),
           "weight-only int8 is close to W8A8: only the layer's own flag and kernel type tell them apart"),
    Mutant("int8-dynamic-on-the-weight-only-kernel", "optimize", "src/llmkit/models/quantized_matmul.py",
           "    if dynamic:\n        return Int8DynamicPacked", "    if False:\n        return Int8DynamicPacked",
           (f"{T_Q}[int8-dynamic]",)),
    Mutant("group-scales-saved-in-fp16", "optimize", QUANT,
           ' and not key.endswith((".scales", ".zeros"))', "", (f"{T_Q}[int8-weight]", f"{T_Q}[int4-weight]")),
    Mutant("wanda-ignores-activations", "optimize", PRUNE,
           'score = w.abs().float() * norms[name][None, :] if cfg.method == "wanda" else w.abs().float()',
           "score = w.abs().float()", (T_W,), "Wanda per row and magnitude per layer differ even without the norms"),
    Mutant("wanda-l1-norm", "optimize", PRUNE, ".pow(2).sum(0))", ".abs().sum(0))", (T_W,)),
    Mutant("magnitude-prunes-per-row", "optimize", PRUNE,
           'per_row=cfg.method == "wanda")', "per_row=True)", (T_M,)),
    Mutant("recovery-refills-the-zeros", "optimize", PRUNE,
           "layer.weight.mul_(masks[name].to(layer.weight.dtype))", "layer.weight.mul_(1.0)", (T_W,)),
    Mutant("onnx-parity-never-fails", "optimize", ONNX, "if diff > TOLERANCE:", "if diff > 1e30:", (T_O,)),
    Mutant("onnx-parity-failure-is-a-crash", "optimize", ONNX,
           'raise UserError(f"ONNX export of {model.ref} disagrees', 'raise RuntimeError(f"ONNX export of {model.ref} disagrees',
           (T_O,)),
    Mutant("failed-write-leaves-its-temp-folder", "optimize", "src/llmkit/workspace.py",
           "        shutil.rmtree(tmp, ignore_errors=True)\n        raise", "        raise", (T_O,)),
    # -- serve ------------------------------------------------------------------------------------
    Mutant("auth-check-skipped", "serve", "src/llmkit/serve/auth.py",
           "        if self.keys:\n", "        if False:\n",
           (f"{OPTIONS}::test_keys_from_the_file_and_the_environment_are_accepted_and_no_other",)),
    Mutant("api-keys-file-ignored", "serve", "src/llmkit/serve/auth.py",
           "                out.append(_checked_key(line, f\"{keys_file}:{n}\"))", "                pass",
           (f"{OPTIONS}::test_keys_from_the_file_and_the_environment_are_accepted_and_no_other",)),
    Mutant("llmkit-api-key-env-ignored", "serve", "src/llmkit/serve/auth.py",
           '"--api-keys-file", "LLMKIT_API_KEY")', '"--api-keys-file", "LLMKIT_API_KEYS")',
           (f"{OPTIONS}::test_keys_from_the_file_and_the_environment_are_accepted_and_no_other",)),
    Mutant("cors-origin-ignored", "serve", "src/llmkit/serve/app.py",
           "allow_origins=cfg.cors_origins", 'allow_origins=["*"]',
           (f"{OPTIONS}::test_cors_headers_go_to_the_allowed_origin_only",)),
    Mutant("one-decode-worker-whatever-asked", "serve", "src/llmkit/serve/served.py",
           "for _ in range(workers)]", "for _ in range(1)]",
           (f"{OPTIONS}::test_two_workers_decode_four_sequences_at_once_with_the_text_of_one",)),
    Mutant("finished-row-dropped-a-step-late", "serve", "src/llmkit/serve/engine.py",
           "                job.last = -1", "                job.last = tok if len(job.out) == job.max_new else -1",
           (STREAMS64,), "invisible to clients: only the engine's step count shows the wasted row"),
    Mutant("engine-ignores-eos", "serve", "src/llmkit/serve/engine.py",
           "stopped = tok in job.eos or", "stopped = False or", (STREAMS64,)),
    Mutant("request-stop-ignored", "serve", "src/llmkit/serve/handling.py",
           "Answer(job, TextStream(served.tokenizer, body.stops))", "Answer(job, TextStream(served.tokenizer, []))", (STREAMS64,)),
    Mutant("engine-ignores-stop-strings", "serve", "src/llmkit/serve/handling.py",
           "stop_check=stop_check(served.tokenizer, body.stops)", "stop_check=None", (STREAMS64,)),
    Mutant("request-seed-ignored", "serve", "src/llmkit/serve/handling.py",
           "seed=None if body.seed is None else body.seed + i,", "seed=None,", (STREAMS64,)),
    Mutant("scheduler-never-batches", "serve", "src/llmkit/serve/engine.py",
           "room, used = min(dec.max_batch, max(share, 1)), len(active)", "room, used = 1, len(active)", (STREAMS64,)),
    # -- train ------------------------------------------------------------------------------------
    Mutant("pretrain-resume-forgets-the-sampler", "train", "src/llmkit/train/pretraining.py",
           'load_state=lambda state: sampler.set_state(state["sampler"])', "load_state=lambda state: None",
           ("tests/train/test_resume.py::test_resume_after_kill_matches_uninterrupted_run",),
           "resumed batches must be the ones the uninterrupted run would have drawn"),
    Mutant("bf16-precision-ignored", "train", "src/llmkit/train/optim.py",
           'if precision == "fp32":', 'if precision in ("fp32", "bf16"):',
           ("tests/train/test_loop_options.py::test_precision_bf16_runs_under_bf16_autocast_and_stays_close_to_fp32",)),
    Mutant("fp16-on-cpu-not-refused", "train", "src/llmkit/train/optim.py",
           'if precision == "fp16" and device != "cuda":', "if False:",
           ("tests/train/test_loop_options.py::test_precision_fp16_on_a_cpu_is_a_one_line_error",)),
    Mutant("compile-flag-ignored", "train", "src/llmkit/train/pretraining.py",
           "return torch.compile(m) if cfg.compile else m", "return m",
           ("tests/train/test_loop_options.py::test_compile_gives_eager_losses_and_weights_and_really_compiles",)),
    Mutant("accumulation-not-averaged", "train", "src/llmkit/train/loop.py",
           "loss = loss / job.grad_accum", "loss = loss",
           ("tests/train/test_loop_options.py::test_gradient_accumulation_of_two_half_batches_equals_one_full_batch",)),
    Mutant("finetune-resume-forgets-the-rng", "train", "src/llmkit/train/loop.py",
           'torch.set_rng_state(state["torch_rng"])', "torch.get_rng_state()",
           ("tests/train/test_finetune_resume.py::test_classify_stopped_by_ctrl_c_resumes_to_the_uninterrupted_result",),
           "with dropout on, the resumed steps must draw the masks the uninterrupted run drew"),
    Mutant("finetune-resume-forgets-the-optimizer", "train", "src/llmkit/train/loop.py",
           'job.optimizer.load_state_dict(state["optimizer"])', "job.optimizer.state_dict()",
           ("tests/train/test_finetune_resume.py::test_distill_stopped_by_sigterm_resumes_to_the_uninterrupted_result",)),
    Mutant("qlora-on-cpu-not-refused", "train", "src/llmkit/train/tuned_model.py",
           '    if device != "cuda":\n        raise UserError(f"{stage}.method', '    if False:\n        raise UserError(f"{stage}.method',
           ("tests/train/test_supervised.py::test_qlora_without_a_cuda_gpu_says_so_and_points_to_lora",)),
    # -- explain ----------------------------------------------------------------------------------
    Mutant("deletion-removes-the-least-attributed-first", "explain", "src/llmkit/explain/faithfulness.py",
           "order = sorted(free, key=lambda i: -float(scores[i]))", "order = sorted(free, key=lambda i: float(scores[i]))",
           ("tests/explain/test_explain.py::test_ig_occlusion_and_shap_are_more_faithful_than_random_deletion",)),
    Mutant("explain-span-ignored", "explain", "src/llmkit/explain/attribution.py",
           "result = occlusion(subject, span)", "result = occlusion(subject, 1)",
           ("tests/explain/test_explain.py::test_occlusion_span_scores_a_token_by_the_mean_drop_of_the_windows_covering_it",)),
    Mutant("next-token-explains-the-one-before", "explain", "src/llmkit/explain/attribution.py",
           ".logits.float()[0, -1].softmax(-1)", ".logits.float()[0, -2].softmax(-1)",
           ("tests/explain/test_explain.py::test_next_token_explains_the_models_most_likely_next_token",)),
    # -- cli ----------------------------------------------------------------------------------------
    Mutant("config-file-beats-flags", "cli", "src/llmkit/config/files.py",
           "elif value is not None:\n            out[key] = value", "elif value is not None and key not in out:\n            out[key] = value",
           ("tests/cli/test_core_cli.py::test_flags_override_the_config_file",)),
    Mutant("adapter-not-applied-on-merge", "cli", "src/llmkit/models/io.py",
           "lm = lm.merge_and_unload() if merge else lm", "lm = lm.unload() if merge else lm",
           ("tests/cli/test_finetune_cli.py::test_sft_lora_then_merge_then_generate",)),
    # -- audit ------------------------------------------------------------------------------------
    Mutant("canary-rank-inverted", "audit", "src/llmkit/audit/canaries.py",
           "rank = 1 + sum(score > true for score in rest)", "rank = 1 + sum(score < true for score in rest)",
           ("tests/audit/test_privacy.py::test_a_leaky_model_is_flagged_on_every_probe",)),
    Mutant("bias-flip-compares-with-itself", "audit", "src/llmkit/audit/bias.py",
           'flips.append(new["label"] != orig["label"])', 'flips.append(False)',
           ("tests/audit/test_bias.py::test_biased_classifier_is_flagged_for_gender",)),
    Mutant("bias-term-accuracy-over-all-records", "audit", "src/llmkit/audit/bias.py",
           "scored = [t for t in hits if t in gold]", "scored = [t for t in texts if t in gold]",
           ("tests/audit/test_bias.py::test_group_and_term_figures_equal_a_recount_of_the_test_records",)),
    # -- registry ---------------------------------------------------------------------------------
    Mutant("versions-do-not-count-up", "registry", "src/llmkit/registry/store.py",
           "version=(latest or 0) + 1,", "version=1,",
           ("tests/registry/test_store.py::test_versions_count_up_per_name",)),
    Mutant("llmkit-db-url-ignored", "registry", "src/llmkit/registry/store.py",
           'url = db_url or os.environ.get("LLMKIT_DB_URL") or f"sqlite', 'url = db_url or f"sqlite',
           (f"{REGISTRY_CLI}::test_llmkit_db_url_in_the_environment_puts_the_registry_in_postgresql",
            f"{REGISTRY_CLI}::test_the_environment_wins_over_the_workspace_default")),
    Mutant("environment-beats-the-db-url-flag", "registry", "src/llmkit/registry/store.py",
           'url = db_url or os.environ.get("LLMKIT_DB_URL") or', 'url = os.environ.get("LLMKIT_DB_URL") or db_url or',
           (f"{REGISTRY_CLI}::test_the_db_url_flag_wins_over_the_config_file_and_the_environment",
            f"{REGISTRY_CLI}::test_the_config_file_wins_over_the_environment")),
    Mutant("config-file-db-url-ignored", "registry", "src/llmkit/cli/common.py",
           '.get("workspace", {}).get("db_url")', '.get("workspace", {}).get("dburl")',
           (f"{REGISTRY_CLI}::test_workspace_db_url_in_the_config_file_puts_the_registry_in_postgresql",
            f"{REGISTRY_CLI}::test_the_config_file_wins_over_the_environment")),
    Mutant("last-migration-skipped", "registry", "src/llmkit/registry/store.py",
           "for version in range(current + 1, SCHEMA_VERSION + 1):", "for version in range(current + 1, SCHEMA_VERSION):",
           ("tests/registry/test_store.py::test_a_new_registry_is_at_the_latest_schema_version",
            "tests/registry/test_store.py::test_a_v1_registry_is_migrated_on_open_and_keeps_its_records")),
    Mutant("adapter-norm-not-folded", "serve", "src/llmkit/runtime/lora_rows.py",
           "        a = a * norm.detach().float()", "        a = a",
           ("tests/runtime/test_lora_rows.py",),
           "the base's RMSNorm weight is folded into its matmul, so an adapter's A must get it too"),
    Mutant("adapter-k-rows-not-paired", "serve", "src/llmkit/runtime/lora_rows.py",
           "        return layout.pairs(b, layout.nkv)", "        return b",
           ("tests/runtime/test_lora_rows.py",), "k's rows are in RoPE pair order in FastLlama's layout"),
    Mutant("prefix-block-parent-unchecked", "serve", "src/llmkit/runtime/prefix_cache.py",
           "entry is None or entry.parent != parent or entry.tokens != tokens", "entry is None or entry.tokens != tokens",
           ("tests/runtime/test_prefix_cache.py::test_an_entry_is_reused_only_under_its_own_parent_and_tokens",),
           "a hash collision must be a miss, never another prefix's K/V"),
    Mutant("prefix-restores-the-last-token", "serve", "src/llmkit/runtime/prefix_cache.py",
           "usable = (len(ids) - 1) // self.block", "usable = len(ids) // self.block",
           ("tests/runtime/test_prefix_cache.py::test_a_whole_cached_prompt_still_computes_its_last_token",),
           "the last token must be computed: its logits start the answer"),
    # -- mutation tour B (serve, tune, preference) --
    Mutant("distill-soft-loss-without-t-squared", "train", "src/llmkit/train/distillation.py",
           'reduction="batchmean") * temperature**2', 'reduction="batchmean")',
           ("tests/train/test_distillation.py::test_soft_loss_equals_hintons_kl_of_the_teacher_from_the_student_times_t_squared",),
           "Hinton's T^2 keeps the soft term's gradients on the hard term's scale; zero-or-positive checks cannot see it"),
    Mutant("distill-soft-loss-reversed-kl", "train", "src/llmkit/train/distillation.py",
           "F.kl_div(s, t, log_target=True", "F.kl_div(t, s, log_target=True",
           ("tests/train/test_distillation.py::test_soft_loss_equals_hintons_kl_of_the_teacher_from_the_student_times_t_squared",),
           "KL(student || teacher) is also zero for equal logits and positive otherwise"),
    Mutant("distill-soft-loss-mean-over-vocabulary", "train", "src/llmkit/train/distillation.py",
           'reduction="batchmean"', 'reduction="mean"',
           ("tests/train/test_distillation.py::test_soft_loss_equals_hintons_kl_of_the_teacher_from_the_student_times_t_squared",)),
    Mutant("kto-kl-estimate-not-clamped", "train", "src/llmkit/train/preference_loss.py",
           ".mean().detach().clamp(min=0)", ".mean().detach()",
           ("tests/train/test_preference_loss.py::test_a_negative_kto_kl_estimate_is_clamped_to_zero",),
           "the TRL comparison runs with a positive KL estimate, where the clamp does nothing"),
    Mutant("dpo-sft-term-over-both-answers", "train", "src/llmkit/train/preference.py",
           "nll = -logps.summed[:n].sum() / logps.tokens[:n].sum().clamp(min=1)",
           "nll = -logps.summed[:n].sum() / logps.tokens.sum().clamp(min=1)",
           ("tests/train/test_preference.py::test_dpo_sft_term_is_the_mean_token_loss_of_the_chosen_answers_alone",),
           "the logged nll and the loss move together: only a count by hand sees the wrong denominator"),
    Mutant("kto-mismatched-answer-is-its-own", "train", "src/llmkit/train/preference.py",
           "for example, other in zip(examples, examples[-1:] + examples[:-1], strict=True):",
           "for example, other in zip(examples, examples, strict=True):",
           ("tests/train/test_preference.py::test_kto_examples_pair_each_prompt_with_the_previous_answer_and_count_what_was_cut",),
           "KTO still learns with z estimated on the matched pairs, so the training tests pass"),
    Mutant("preference-truncated-counts-answers-that-fit", "train", "src/llmkit/train/preference.py",
           "len(whole[1]) > len(ids[1])", "len(whole[1]) >= len(ids[1])",
           ("tests/train/test_preference.py::test_kto_examples_pair_each_prompt_with_the_previous_answer_and_count_what_was_cut",)),
    Mutant("grpo-advantage-not-divided-by-the-group-std", "train", "src/llmkit/train/grpo.py",
           "advantages = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).view(-1)",
           "advantages = (groups - groups.mean(1, keepdim=True)).view(-1)",
           ("tests/train/test_grpo.py::test_one_step_moves_the_policy_toward_the_better_answers_of_each_group",),
           "the sign of the update is unchanged: only the logged loss, recomputed by hand, sees the scale"),
    Mutant("tune-perplexity-maximised", "tune", "src/llmkit/tune/study.py",
           'metric.endswith(("loss", "ppl"))', 'metric.endswith("loss")',
           ("tests/tune/test_study.py::test_loss_and_perplexity_are_minimised_by_default_and_a_given_direction_wins",),
           "a study maximising val_ppl keeps its worst trial"),
    Mutant("tune-int-step-grid-ignored", "tune", "src/llmkit/tune/space.py",
           "return float(value).is_integer() and (int(value) - int(self.low)) % int(self.step or 1) == 0",
           "return float(value).is_integer()",
           ("tests/tune/test_space.py::test_start_values_are_the_given_config_values_the_space_can_draw",),
           "an off-grid default enqueued as the first trial is a value the space cannot draw"),
]
