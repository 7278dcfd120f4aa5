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
CLEANUP = "tests/registry/test_cleanup.py"
GGUF_W = "src/llmkit/optimize/export_gguf.py"
GGUF_META = "tests/optimize/test_gguf.py::test_the_gguf_carries_the_chat_template_the_turn_end_and_the_special_ids"
GGUF_IDS = ("tests/optimize/test_gguf_architectures.py::"
            "test_an_untied_head_stays_at_8_bits_under_q4_0_and_the_norm_epsilon_and_ids_are_the_models")
GGUF_CONTEXT = "tests/optimize/test_gguf_architectures.py::test_the_context_is_the_sliding_window_only_when_a_layer_slides"
MODELFILE_T = ("tests/optimize/test_chat_format.py::"
               "test_end_of_turn_is_found_after_a_space_and_a_greedy_model_keeps_ollamas_sampling")
FAST_REFUSALS = "tests/train/test_fast_lora.py::test_a_window_only_layers_typed_sliding_use_decides_and_partial_rotary_is_refused"
GATE = "src/llmkit/eval/gate.py"
GATE_T = "tests/eval/test_gate.py"
GATE_UNIT = f"{GATE_T}::test_perplexity_weighs_documents_by_their_tokens_and_the_general_check_reads_rises_and_drops"
GATE_PROMOTE = f"{GATE_T}::test_promote_require_pass_reads_the_latest_gate_where_the_model_was_tuned"
GC_RUNS = f"{CLEANUP}::test_failed_runs_go_when_died_too_but_not_a_study_one_a_model_came_from_or_one_elsewhere"

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
    # -- mutation tour A (registry, shipping, fast SFT, gate) --
    Mutant("gc-grace-reads-only-the-folders-own-time", "registry", "src/llmkit/registry/cleanup.py",
           "if now - _last_change(entry) < GRACE_S:", "if now - entry.lstat().st_mtime < GRACE_S:",
           (f"{CLEANUP}::test_a_folder_whose_files_changed_within_the_hour_is_kept_whatever_its_own_time",),
           "writing a file into an old folder leaves the folder's own time alone"),
    Mutant("gc-names-the-first-kind-in-a-path", "registry", "src/llmkit/registry/cleanup.py",
           "for i in range(len(parts) - 2, -1, -1):", "for i in range(len(parts) - 1):",
           (f"{CLEANUP}::test_a_workspace_inside_a_folder_named_like_a_kind_keeps_its_folders",),
           "a workspace under /data/models/ would have every folder removed as unnamed"),
    Mutant("gc-failed-runs-takes-a-study", "registry", "src/llmkit/registry/cleanup.py",
           ' and rec.kind != "study":', ":", (GC_RUNS,)),
    Mutant("gc-failed-runs-takes-a-run-a-model-came-from", "registry", "src/llmkit/registry/cleanup.py",
           "and rec.id not in with_children and", "and", (GC_RUNS,)),
    Mutant("gc-failed-runs-leaves-died-runs", "registry", "src/llmkit/registry/cleanup.py",
           "in (FAILED, DIED)", "in (FAILED,)", (GC_RUNS,)),
    Mutant("gc-removes-records-of-another-workspace", "registry", "src/llmkit/registry/cleanup.py",
           "here = rec.path is not None and root in Path(rec.path).parents", "here = rec.path is not None", (GC_RUNS,),
           "a record whose folder is outside this workspace is not 'gone' here"),
    Mutant("gc-ignores-aliases", "registry", "src/llmkit/cli/gc.py",
           "protected=protected)", "protected=set())", (f"{CLEANUP}::test_gc_keeps_the_record_an_alias_points_at",)),
    Mutant("gc-rmtree-on-a-symlink", "registry", "src/llmkit/registry/cleanup.py",
           "        if path.is_dir() and not path.is_symlink():", "        if path.is_dir():",
           (f"{CLEANUP}::test_gc_removes_a_symlink_in_the_workspace_and_not_what_it_points_at",)),
    Mutant("gc-dry-run-refused-like-a-removal", "registry", "src/llmkit/cli/gc.py",
           "if not dry_run and not force and unused", "if not force and unused",
           (f"{CLEANUP}::test_gc_dry_run_lists_what_a_real_run_would_refuse",),
           "the refusal says 'llmkit gc --dry-run lists them'"),
    Mutant("run-process-named-by-another-stat-field", "registry", "src/llmkit/registry/run_state.py",
           "split()[19]", "split()[20]",
           ("tests/registry/test_run_state.py::test_a_process_is_named_by_its_start_time_since_boot",),
           "field 23 (vsize) changes as the process runs: a live run would read as died"),
    Mutant("ambiguous-id-prefix-picks-one", "registry", "src/llmkit/registry/store.py",
           "                if len(rows) == 1:", "                if rows:",
           ("tests/registry/test_store.py::test_an_id_prefix_two_records_share_finds_neither",),
           "llmkit rm PREFIX would remove one of two records"),
    Mutant("continued-run-reuses-a-version-folder", "train", "src/llmkit/train/checkpoint.py",
           "    while folder.exists():", "    if folder.exists():",
           ("tests/train/test_checkpoint.py::test_a_run_continued_again_to_the_same_step_gets_a_model_folder_no_version_has",)),
    Mutant("gguf-eot-token-not-written", "optimize", GGUF_W, "        if eot in vocab:", "        if False:",
           (GGUF_META, GGUF_IDS), "llmkit's turns end with <|end|>, not EOS: llama.cpp would generate past the answer"),
    Mutant("gguf-eos-written-as-bos", "optimize", GGUF_W, '("eos_token_id", writer.add_eos_token_id)',
           '("bos_token_id", writer.add_eos_token_id)', (GGUF_IDS,)),
    Mutant("gguf-chat-template-not-written", "optimize", GGUF_W, "        writer.add_chat_template(template)", "        pass",
           (GGUF_META,)),
    Mutant("gguf-adds-bos-to-prompts", "optimize", GGUF_W, "writer.add_add_bos_token(False)", "writer.add_add_bos_token(True)",
           (GGUF_META,), "llmkit's prompts carry their own bos: llama.cpp would put a second one"),
    Mutant("gguf-untied-head-at-4-bits", "optimize", GGUF_W,
           'head = "token_embd.weight" if config.get("tie_word_embeddings", False) else "output.weight"',
           'head = "token_embd.weight"', (GGUF_IDS,)),
    Mutant("lora-dropout-ignored-on-the-fast-path", "train", "src/llmkit/train/fast_lora.py",
           "self.dropout = nn.Dropout(lora.dropout) if lora.dropout > 0 else None", "self.dropout = None",
           ("tests/train/test_fast_lora.py::test_lora_dropout_drops_the_adapters_input_in_training_only",),
           "the peft parity tests run with dropout 0"),
    Mutant("fast-path-window-of-a-layer-that-does-not-slide", "train", "src/llmkit/models/llama.py",
           'or "sliding_attention" in layer_types', "or bool(layer_types)", (FAST_REFUSALS,),
           "Qwen2/2.5 name a window that layers below max_window_layers do not use"),
    Mutant("partial-rotary-in-rope-parameters-missed", "train", "src/llmkit/models/rope.py",
           'float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None) or 1.0))',
           'float(getattr(config, "partial_rotary_factor", None) or 1.0)', (FAST_REFUSALS,),
           "transformers 5 keeps partial_rotary_factor in rope_parameters"),
    Mutant("training-llama-drops-the-yarn-attention-factor", "train", "src/llmkit/models/llama.py",
           "return emb.cos() * scaling, emb.sin() * scaling", "return emb.cos(), emb.sin()",
           ("tests/models/test_llama.py::test_yarn_scales_cos_and_sin_by_its_attention_factor_as_hf_does",),
           "with the default small init attention is near uniform and the factor does not show"),
    Mutant("gate-interval-is-90-percent", "eval", GATE, "np.percentile(draws, [2.5, 97.5])", "np.percentile(draws, [5, 95])",
           (f"{GATE_T}::test_the_interval_is_95_percent_wide",)),
    Mutant("gate-no-regressed-items-fails-at-zero", "eval", GATE, "regressed <= cfg.max_regressed_items",
           "regressed < cfg.max_regressed_items", (GATE_UNIT,), "--max-regressed-items 0 must pass when none regressed"),
    Mutant("gate-general-perplexity-rise-inverted", "eval", GATE,
           '"perplexity_increase": tuned["perplexity"] / base["perplexity"] - 1.0',
           '"perplexity_increase": base["perplexity"] / tuned["perplexity"] - 1.0', (GATE_UNIT,)),
    Mutant("gate-general-answer-drop-inverted", "eval", GATE, '"answer_drop": base["answered"] - tuned["answered"]',
           '"answer_drop": tuned["answered"] - base["answered"]', (GATE_UNIT,)),
    Mutant("gate-perplexity-a-mean-over-documents", "eval", GATE,
           'return math.exp(min(sum(i["nll"] for i in items) / max(tokens, 1), 50.0))',
           'return math.exp(min(sum(i["nll"] / max(i["tokens"], 1) for i in items) / len(items), 50.0))', (GATE_UNIT,)),
    Mutant("gate-lm-improvement-relative-to-tuned", "eval", GATE,
           'improvement = (figures[0] - figures[1]) / figures[0] if kind == "lm"',
           'improvement = (figures[0] - figures[1]) / figures[1] if kind == "lm"', (GATE_PROMOTE,)),
    Mutant("promote-reads-the-first-gate", "eval", GATE, "return max(gates, key=lambda r: r.created_at) if gates else None",
           "return gates[0] if gates else None", (GATE_PROMOTE,)),
    Mutant("promote-counts-a-gate-the-model-was-base-of", "eval", GATE,
           'if relation == "gated" and rec.kind == "compare"', 'if relation in ("gated", "gate_base") and rec.kind == "compare"',
           (GATE_PROMOTE,), "a model that lost a gate as BASE would pass --require-pass"),
    Mutant("gguf-context-is-a-window-no-layer-uses", "optimize", "src/llmkit/optimize/gguf_arch.py",
           'slides = "sliding_attention" in layer_types if layer_types else', "slides = True if layer_types else",
           (GGUF_CONTEXT,), "Qwen2/2.5 configs name a window that every layer of theirs ignores"),
    Mutant("gguf-use-sliding-window-false-ignored", "optimize", "src/llmkit/optimize/gguf_arch.py",
           '(config.get("use_sliding_window", True) is not False)', "(True)", (GGUF_CONTEXT,)),
    Mutant("gguf-char-vocab-without-merges", "optimize", GGUF_W, "                for k in range(1, len(pieces)):",
           "                for k in range(1, 1):",
           ("tests/optimize/test_gguf.py::test_llama_cpp_tokenizes_a_character_vocabulary_beyond_ascii_one_token_per_character",),
           "the Shakespeare char model is all ASCII: a CJK char model would tokenize into bytes"),
    Mutant("gguf-folder-drops-chat-template-jinja", "optimize", GGUF_W, 'file.suffix in (".json", ".jinja", ".txt")',
           'file.suffix in (".json", ".txt")', (GGUF_IDS,)),
    Mutant("modelfile-samples-a-greedy-model", "optimize", "src/llmkit/optimize/chat_format.py",
           '    if (sampling or {}).get("do_sample", True):', "    if True:", (MODELFILE_T,)),
    Mutant("end-of-turn-missed-after-a-space", "optimize", "src/llmkit/optimize/chat_format.py",
           '    after = after.lstrip(" ")', "    pass", (MODELFILE_T,), "Llama 2 style templates write ' </s>'"),
]

