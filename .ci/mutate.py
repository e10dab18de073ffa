"""Mutation check: plant small, plausible bugs in a copy of the repo and run the tests that claim
to catch each one. Prints ``caught`` or ``survived`` per mutation; exits 0 only if all are caught.

    bash .ci/mutation                 # every mutation (installs what it needs, like .ci/run)
    python .ci/mutate.py --list       # names only
    python .ci/mutate.py NAME ...     # some of them

Each mutation replaces one exact snippet (which must occur exactly once) in one file of a
temporary copy of the checkout's tracked files; the checkout itself is never written. A mutation
is caught when its tests fail (pytest exit status 1); a collection or usage error (status 2-5)
is reported as ``error``, and so is a baseline (unmutated copy) that does not pass.
Add mutations for each new family and feature as it lands (docs/testing.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
    name: str
    path: str          # file in the repo
    old: str           # snippet, exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids (or files) that must fail
    slow: bool = False      # the tests include ones marked slow (run with -m "")


M = Mutation
MUTATIONS = (
    # ---- the shared step (zoo/core/step.py)
    M("step: microbatches share one rng", "zoo/core/step.py",
      "merge(mb_rows, others), mb,\n                                    jax.random.fold_in(rng, i))",
      "merge(mb_rows, others), mb,\n                                    rng)",
      ("tests/test_core.py::test_grad_accumulation_gives_each_microbatch_its_own_rng",)),
    M("step: accumulated gradients summed, not averaged", "zoo/core/step.py",
      "mean = lambda tree: jax.tree.map(lambda x: x / k, tree)",
      "mean = lambda tree: jax.tree.map(lambda x: x / 1, tree)",
      ("tests/test_core.py::test_grad_accumulation_equals_one_big_step",)),
    M("step: repeated updates take gradients at the step's starting params", "zoo/core/step.py",
      "update, params, model_state, batch, update_rng,",
      "update, dict(state.params), model_state, batch, update_rng,",
      ("tests/test_gan.py",)),
    M("step: the same rng every step", "zoo/core/step.py",
      "rng = jax.random.fold_in(state.rng, state.step)",
      "rng = jax.random.fold_in(state.rng, 0)",
      ("tests/test_core.py::test_rng_differs_across_pmap_shards_and_steps",)),
    M("step: EMA without its warm-up", "zoo/core/step.py",
      "d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))",
      "d = jnp.asarray(decay)",
      ("tests/test_diffusion.py::test_ema_after_k_steps_equals_the_formula",)),
    M("step: a non-finite update is kept", "zoo/core/step.py",
      "jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)",
      "jax.tree.map(lambda n, o: n, new, old)",
      ("tests/test_pipeline.py::test_nonfinite_updates_can_be_skipped_and_counted",)),
    # ---- strategies (zoo/core/parallel.py, the pmap axis in the step)
    M("pmap: gradients not averaged over devices", "zoo/core/step.py",
      "    if axis_name is None:\n        return tree\n    mean = lambda x:",
      "    if True:\n        return tree\n    mean = lambda x:",
      ("tests/test_core.py::test_strategies_agree_after_five_steps",)),
    M("pmap: every shard draws the same rng", "zoo/core/step.py",
      "        if axis_name is not None:\n            rng = jax.random.fold_in(rng, lax.axis_index("
      "axis_name))\n        params, opt_state",
      "        params, opt_state",
      ("tests/test_core.py::test_rng_differs_across_pmap_shards_and_steps",)),
    M("pmap: BatchNorm statistics not synchronised", "zoo/core/parallel.py",
      "        jax.lax.axis_index(PMAP_AXIS)\n        return PMAP_AXIS",
      "        jax.lax.axis_index(PMAP_AXIS)\n        return None",
      ("tests/test_core.py::test_a_users_batchnorm_dropout_model_agrees_under_every_strategy",)),
    M("fsdp: shards the smallest divisible dimension", "zoo/core/parallel.py",
      "    _, axis = max(candidates)", "    _, axis = min(candidates)",
      ("tests/test_core.py::test_fsdp_spec_rules",)),
    # ---- losses
    M("gan: default discriminator loss inverted", "zoo/models/gan.py",
      "return jnp.mean(jax.nn.softplus(-real) + jax.nn.softplus(fake))",
      "return jnp.mean(jax.nn.softplus(real) + jax.nn.softplus(-fake))",
      ("tests/test_gan.py",)),
    M("gan: WGAN-GP penalises |grad| instead of |grad| - 1", "zoo/models/gan.py",
      "penalty = jnp.mean((jnp.sqrt(jnp.sum(g ** 2, axis=-1) + 1e-12) - 1.0) ** 2)",
      "penalty = jnp.mean((jnp.sqrt(jnp.sum(g ** 2, axis=-1) + 1e-12) - 0.0) ** 2)",
      ("tests/test_gan.py",)),
    M("gan: D sees real images in [0, 1] and G's in [-1, 1]", "zoo/models/gan.py",
      'x_real = batch["image"] * 2.0 - 1.0', 'x_real = batch["image"] * 1.0',
      ("tests/test_gan.py",)),
    M("vae: IWAE without its -log k", "zoo/models/vae.py",
      "return jax.nn.logsumexp(per_chunk, axis=0) - math.log(k)",
      "return jax.nn.logsumexp(per_chunk, axis=0)",
      ("tests/test_vae.py",)),
    M("vae: KL with the log-variance's sign flipped", "zoo/models/vae.py",
      "jnp.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=-1)",
      "jnp.exp(logvar) + mean ** 2 - 1.0 + logvar, axis=-1)",
      ("tests/test_vae.py",)),
    M("diffusion: q_sample scales the noise by 1 - abar, not its root", "zoo/core/diffusion.py",
      "return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise",
      "return jnp.sqrt(abar) * x0 + (1.0 - abar) * noise",
      ("tests/test_diffusion.py::test_schedules_and_q_sample_match_their_closed_forms",)),
    # ---- metrics (zoo/metrics.py)
    M("fid: the cross term added, not subtracted", "zoo/metrics.py",
      "np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2, method)",
      "np.trace(s2) + 2.0 * trace_sqrt_product(s1, s2, method)",
      ("tests/test_metrics.py",)),
    M("precision/recall: the point itself as its nearest neighbour", "zoo/metrics.py",
      "np.partition(d, k, axis=1)[:, k]", "np.partition(d, k - 1, axis=1)[:, k - 1]",
      ("tests/test_metrics.py",)),
    # ---- samplers (zoo/core/diffusion.py)
    M("ddim: eta's noise scale without the (1 - abar/abar_prev) factor", "zoo/core/diffusion.py",
      "sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))",
      "sigma = eta * jnp.sqrt((1 - abar_prev) / (1 - abar))",
      ("tests/test_diffusion.py::test_ddpm_ancestral_sampling_equals_ddim_with_eta_1_over_all_steps",
       "tests/test_diffusion.py::test_samplers_draw_the_data_distribution_under_its_exact_denoiser")),
    M("guidance: mixed around the conditional output", "zoo/core/diffusion.py",
      "return uncond + guidance * (cond - uncond)", "return cond + guidance * (cond - uncond)",
      ("tests/test_diffusion.py::test_guidance_0_is_the_unconditional_model_and_1_the_conditional_one",)),
    M("inpaint: known and unknown regions swapped", "zoo/core/diffusion.py",
      "merge = lambda generated, given: known * given + (1 - known) * generated",
      "merge = lambda generated, given: (1 - known) * given + known * generated",
      ("tests/test_diffusion.py::test_inpainting_keeps_the_known_pixels_and_fills_the_rest_from_the_model",)),
    # ---- checkpointing (zoo/checkpoint.py, zoo/train.py)
    M("checkpoint: the best policy ranks the wrong way", "zoo/checkpoint.py",
      'sign = 1.0 if best_mode == "max" else -1.0', 'sign = -1.0 if best_mode == "max" else 1.0',
      ("tests/test_pipeline.py::test_the_best_checkpoint_survives_later_worse_ones",)),
    M("checkpoint: the optimizer state is not saved", "zoo/checkpoint.py",
      '_STATE_KEYS = ("step", "params", "opt_state", "model_state", "rng", "ema_params")',
      '_STATE_KEYS = ("step", "params", "model_state", "rng", "ema_params")',
      ("tests/test_diffusion.py::test_resume_with_an_ema_is_bitwise_and_samples_use_it",)),
    M("checkpoint: one process saves replicated arrays in slices", "zoo/checkpoint.py",
      "ArrayHandler(use_replica_parallel=False)", "ArrayHandler(use_replica_parallel=True)",
      ("tests/test_pipeline.py::test_a_one_process_save_of_a_replicated_state_compiles_nothing_and_restores",)),
    M("resume: the data position is not restored", "zoo/train.py",
      'it.restore(extra["data"]["iterator"])', 'pass',
      ("tests/test_pipeline.py::test_sigkill_at_a_random_step_then_resume_is_bitwise_identical",)),
    # ---- GPT-2 import (zoo/models/transformer.py, zoo/convert_gpt2.py)
    M("gpt-2: exact GELU where GPT-2 uses the tanh form", "zoo/models/transformer.py",
      "h = nn.gelu(h, approximate=True)", "h = nn.gelu(h, approximate=False)",
      ("tests/test_convert_gpt2.py",)),
    M("transformer: attention not causal", "zoo/models/transformer.py",
      "jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=kernel)",
      "jax.nn.dot_product_attention(q, k, v, is_causal=False, implementation=kernel)",
      ("tests/test_transformer.py::test_causal",)),
    # ---- fine-tuning and interop (zoo/core/lora.py, optim.py, zoo/finetune.py, convert_gpt2.py)
    M("lora: merged without its alpha / rank scale", "zoo/core/lora.py",
      'delta = scale * params["lora_a"] @ params["lora_b"]',
      'delta = params["lora_a"] @ params["lora_b"]',
      ("tests/test_finetune.py::test_lora_adapters_start_as_the_base_model_and_merge_exactly",)),
    M("freeze: frozen leaves get the optimizer's update", "zoo/core/optim.py",
      '{"trained": tx, "frozen": optax.set_to_zero()}', '{"trained": tx, "frozen": tx}',
      ("tests/test_finetune.py::test_frozen_parameters_stay_bitwise_and_keep_no_optimizer_state",)),
    M("init_from: a parameter of another shape silently drawn fresh", "zoo/finetune.py",
      "elif np.shape(theirs[path]) != np.shape(x):", "elif False:",
      ("tests/test_finetune.py::test_shapes_that_differ_are_refused_by_name_unless_reinitialised",)),
    M("gpt-2 export: ln_f's scale written as its bias", "zoo/convert_gpt2.py",
      '"transformer.ln_f.bias": params["ln_f"]["bias"]',
      '"transformer.ln_f.bias": params["ln_f"]["scale"]',
      ("tests/test_finetune.py::test_import_then_export_gives_back_the_hugging_face_model",)),
    # ---- judging samples (zoo/eval_quality.py, zoo/checkpoint.py)
    M("classifier: a judge trained on another dataset accepted", "zoo/eval_quality.py",
      "and not allow_other_dataset):", "and allow_other_dataset):",
      ("tests/test_classifier.py::test_a_classifier_of_another_dataset_is_refused_naming_both",)),
    M("samples: drawn from the raw params, not the EMA", "zoo/core/train_state.py",
      "return state.params if state.ema_params is None else state.ema_params",
      "return state.params",
      ("tests/test_diffusion.py::test_resume_with_an_ema_is_bitwise_and_samples_use_it",
       "tests/test_text_pipeline.py::test_zoo_generate_draws_from_a_runs_ema_as_zoo_sample_does")),
    # ---- the transposed convolution's backward (zoo/models/layers.py)
    M("layers: transposed conv's kernel gradient not flipped back", "zoo/models/layers.py",
      "return dx, _adjoint_kernel(d_adjoint)", "return dx, d_adjoint.transpose(0, 1, 3, 2)",
      ("tests/test_layers.py",)),
    M("layers: adjoint convolution padded one too few on the left", "zoo/models/layers.py",
      "left = k - 1 - same_transpose_padding(k, s)", "left = k - 2 - same_transpose_padding(k, s)",
      ("tests/test_layers.py",)),
    # ---- BatchNorm with its sums over rows as matmuls (zoo/models/layers.py)
    M("layers: a broadcast's gradient is not summed over its rows", "zoo/models/layers.py",
      "lambda rows, _, g: (row_sum(g),))", "lambda rows, _, g: (g[..., 0, :] * rows,))",
      ("tests/test_layers.py",)),
    M("layers: BatchNorm's statistics not averaged over the pmap axis", "zoo/models/layers.py",
      "mean, mean2 = jax.lax.pmean((mean, mean2), self.axis_name)", "pass",
      ("tests/test_layers.py::test_batch_norm_averages_statistics_over_its_axis_under_pmap",)),
    M("layers: BatchNorm's variance about zero, not the mean", "zoo/models/layers.py",
      "var = jnp.maximum(0.0, mean2 - mean ** 2)", "var = mean2",
      ("tests/test_layers.py",)),
    # ---- Dense with its bias gradient from the kernel gradient's matmul (zoo/models/layers.py)
    M("layers: Dense's bias gradient read from the kernel gradient's first row",
      "zoo/models/layers.py", "d[:-1].astype(kernel.dtype), d[-1].astype(bias.dtype)",
      "d[1:].astype(kernel.dtype), d[0].astype(bias.dtype)",
      ("tests/test_layers.py",)),
    M("layers: Dense's gradients left in float32 for bfloat16 params", "zoo/models/layers.py",
      "return dx.astype(x.dtype), d[:-1].astype(kernel.dtype), d[-1].astype(bias.dtype)",
      "return dx, d[:-1], d[-1]",
      ("tests/test_layers.py::test_dense_second_derivatives_and_bfloat16_equal_flax",)),
    M("layers: Dense's input gradient through the kernel untransposed", "zoo/models/layers.py",
      "dx = _contract_last(dy, kernel, 1, precision)",
      "dx = _contract_last(dy, kernel.reshape(kernel.shape[::-1]), 0, precision)",
      ("tests/test_layers.py",)),
    M("layers: Dense falls back to flax's on CPU too", "zoo/models/layers.py",
      "if not (self.use_bias and _sum_as_matmul() and", "if not (self.use_bias and False and",
      ("tests/test_layers.py::test_dense_without_bias_or_with_its_own_dot_general_is_flaxs",)),
    # ---- query-blocked causal attention (zoo/models/transformer.py)
    M("transformer: a query block's mask hides each query's own key", "zoo/models/transformer.py",
      "own = jnp.where(jnp.tril(jnp.ones((end - start,) * 2, bool)), own",
      "own = jnp.where(jnp.tril(jnp.ones((end - start,) * 2, bool), -1), own",
      ("tests/test_transformer.py::test_blocked_causal_attention_is_jaxs_causal_attention",)),
    M("transformer: a query block's softmax not shared with its earlier keys",
      "zoo/models/transformer.py",
      "        total = sum(w.sum(-1, keepdims=True) for w, _ in weights)",
      "        total = weights[0][0].sum(-1, keepdims=True)",
      ("tests/test_transformer.py::test_blocked_causal_attention_is_jaxs_causal_attention",)),
    # ---- the process settings zoo's commands run with (zoo/core)
    M("host_memory: large blocks still mmapped", "zoo/core/host_memory.py",
      "((M_MMAP_MAX, 0),", "((M_MMAP_MAX, 65536),",
      ("tests/test_host_memory.py",)),
    M("host_memory: steps still dispatched to a worker thread", "zoo/core/host_memory.py",
      "    if applied and cpu_device_count(environ) == 1:", "    if False:",
      ("tests/test_host_memory.py::test_a_jitted_steps_temporaries_are_not_faulted_in_again_at_every_call",)),
    # ---- a checkpoint that cannot be written (zoo/checkpoint.py, zoo/cli.py)
    M("checkpoint: a failed background save blamed on the next step", "zoo/checkpoint.py",
      "        self.wait()  # orbax waits", "        pass  # orbax waits",
      ("tests/test_cli_errors.py::test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_run_resumes",)),
    M("checkpoint: a process whose save failed waits for the others", "zoo/save_barrier.py",
      "        if error is not None and threading.current_thread() is not self.saver:",
      "        if False:",
      ("tests/test_multihost_cli.py::test_a_save_one_process_cannot_write_stops_every_process_in_one_line",)),
    M("checkpoint: the others wait on after a process's save failed", "zoo/save_barrier.py",
      "            if failed:\n", "            if False:\n",
      ("tests/test_multihost_cli.py::test_a_save_one_process_cannot_write_stops_every_process_in_one_line",)),
    M("cli: a process that failed alone waits at JAX's shutdown barrier", "zoo/cli.py",
      "            distributed.leave_after_error(code)\n", "",
      ("tests/test_multihost_cli.py::test_an_error_on_process_0_alone_stops_both_processes_in_seconds",)),
    M("distributed: a process that failed leaves at once though every other one had ended",
      "zoo/core/distributed.py",
      "        if len(ended) == count and \"left\" not in ended.values():\n            return\n", "",
      ("tests/test_multihost_cli.py::test_an_error_on_process_0_alone_after_process_1_finished_lets_process_1_exit_0",),
      slow=True),
    M("cli: orbax's save errors logged with their tracebacks", "zoo/cli.py",
      '        logging.getLogger("absl").addFilter(_QuietOrbaxErrors())\n', "",
      ("tests/test_cli_errors.py::test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_run_resumes",)),
    M("cli: the reads orbax abandons on a damaged checkpoint reported after zoo's line",
      "zoo/cli.py", "        sys.unraisablehook = _quiet_unraisable\n"
      '        logging.getLogger("asyncio").addFilter(_QuietAbandonedReads())\n', "",
      ("tests/test_cli_errors.py::test_zoo_silences_the_reads_orbax_abandons_and_nothing_else",
       "tests/test_cli_errors.py::test_a_damaged_array_file_is_reported_in_one_line_not_a_flood")),
    M("xla_flags: YNNPACK's reductions on (jax#39103)", "zoo/core/xla_flags.py",
      '"INDIVIDUAL_DOT"}', '"INDIVIDUAL_DOT,REDUCE"}',
      ("tests/test_pipeline.py::test_zoos_xla_cpu_defaults_sum_exactly_where_ynnpack_reductions_do_not",)),
    # ---- the bench (zoo/bench)
    M("bench: a run cut short keeps nothing", "zoo/bench/suites.py",
      "        if on_case is not None:\n            on_case(out)\n", "",
      ("tests/test_bench.py::test_a_bench_cut_short_keeps_the_cases_it_finished",)),
    M("pmap: the canonical copy computed on the devices again", "zoo/core/parallel.py",
      "np.asarray(x).reshape(-1, *np.shape(x)[2:]), _first_copy)",
      "x.reshape(-1, *x.shape[2:]), lambda x: x[0])",
      ("tests/test_core.py::test_pmap_canonical_state_reads_the_device_buffers",)),
    M("bench --profile: ops on the calling thread dropped", "zoo/bench/profile.py",
      "if event.name in hlo or (worker and", "if worker and (",
      ("tests/test_bench.py::test_profile_counts_ops_on_every_thread_and_nothing_else",)),
    M("bench --profile: a loop's time counted beside its body's ops", "zoo/bench/profile.py",
      "                if _CONTAINS_OPS.search(hlo.get(event.name, \"\")):\n"
      "                    continue\n", "",
      ("tests/test_bench.py::test_profile_counts_ops_on_every_thread_and_nothing_else",)),
    M("bench --profile: Python's events counted as ops", "zoo/bench/profile.py",
      "if event.name in hlo or (worker and not _NOT_OPS.match(event.name)):",
      "if event.name in hlo or not _NOT_OPS.match(event.name):",
      ("tests/test_bench.py::test_profile_counts_ops_on_every_thread_and_nothing_else",)),
    M("eval: a LoRA state's report drawn without its adapters merged", "zoo/eval_quality.py",
      "    params = family.plain_params(params)\n", "",
      ("tests/test_finetune.py::test_zoo_evals_text_report_on_a_lora_state_judges_the_model_it_trained",)),
    M("generate: a run's params drawn from, not its EMA", "zoo/generate.py",
      "run.sampling_params[run.family.text_player]", "run.params[run.family.text_player]",
      ("tests/test_text_pipeline.py::test_zoo_generate_draws_from_a_runs_ema_as_zoo_sample_does",)),
    M("generate: a run's text samples drawn from the player named 'model', not the family's "
      "text player", "zoo/generate.py",
      "        generator.params = params[player]", '        generator.params = params["model"]',
      ("tests/test_generate.py::test_a_runs_text_sampler_is_checked_when_it_is_made",)),
    M("bench: a strategy whose devices a case's batch does not split over is run anyway (and "
      "fails)", "zoo/bench/suites.py", '**{**kwargs, "strategies": strategies})', "**kwargs)",
      ("tests/test_bench.py::test_a_strategy_whose_devices_a_batch_does_not_split_over_is_left_"
       "out_with_a_note",)),
    M("bench: a case that fails while running is only a cut-short cell of the table",
      "zoo/bench/cli.py", "    _say_failures(result[\"records\"])\n", "",
      ("tests/test_bench.py::test_a_case_that_fails_while_running_is_named_on_stderr",)),
    M("data: a model with fewer classes than its dataset trains on labels it has no class for",
      "zoo/input_pipeline.py", "    if 0 < family.num_classes < classes:", "    if False:",
      ("tests/test_cli_errors.py::test_bad_input_is_one_or_two_lines_and_never_a_traceback",)),
    M("data: synthetic labels run 0 .. 9 whatever the model's classes", "zoo/input_pipeline.py",
      "num_classes=family.num_classes or 10,", "num_classes=10,",
      ("tests/test_pipeline.py::test_synthetic_labels_are_the_models_classes",)),
    M("parallel: a mesh's data and fsdp under pmap or single are silently ignored",
      "zoo/core/parallel.py", "    if mesh_keys and p.strategy in STRATEGIES:", "    if False:",
      ("tests/test_core.py::test_a_mesh_layout_under_another_strategy_is_refused_and_zoo_eval_"
       "drops_its_own",)),
    M("eval: a mesh run evaluated on one device keeps its mesh's axes", "zoo/evaluate.py",
      "    if config.parallel.strategy != \"mesh\":  # a saved mesh's axes mean nothing",
      "    if False:  # a saved mesh's axes mean nothing",
      ("tests/test_core.py::test_a_mesh_layout_under_another_strategy_is_refused_and_zoo_eval_"
       "drops_its_own",)),
    M("data: a text key on image data is silently ignored", "zoo/input_pipeline.py",
      "    if text_keys and not is_text(data):", "    if False:",
      ("tests/test_pipeline.py::test_unknown_dataset_and_model",)),
    M("bench: an option the chosen mode does not read is silently ignored", "zoo/bench/cli.py",
      "    if unread:  # given", "    if False:  # given",
      ("tests/test_bench.py::test_bench_main_refuses_bad_options_in_one_line_before_running",)),
    M("build: a model larger than the device's memory is left to XLA's allocation to refuse",
      "zoo/build.py", "    check_fits_in_memory(family, run, run.data.batch_size)\n",
      "",
      ("tests/test_pipeline.py::test_a_model_larger_than_memory_is_refused_before_anything_is_"
       "allocated",)),
    M("bench: XLA's FLOPs over the jaxpr's reported as over the family's count",
      "zoo/bench/records.py", "(xla / analytic) if (xla and analytic) else None",
      "(xla / used) if (xla and used) else None",
      ("tests/test_bench.py::test_throughput_mfu_and_speedup_from_known_times",)),
    M("vae: the IWAE likelihood drops the images past the last whole batch", "zoo/models/vae.py",
      "rng, total, n = jax.random.PRNGKey(seed), 0.0, len(images)",
      "rng, total, n = jax.random.PRNGKey(seed), 0.0, len(images) // batch_size * batch_size",
      ("tests/test_vae.py::test_elbo_and_iwae_against_the_exact_log_likelihood_of_a_one_latent_vae",)),
    M("mesh: abstract inputs left without the placed shardings", "zoo/core/parallel.py",
      "return (jax.tree.map(shaped, state, self.state_shardings(state)),\n"
      "                jax.tree.map(lambda x: shaped(x, self.batch_sharding), batch))",
      "return state, batch",
      ("tests/test_core.py::test_fsdp_shards_params_and_optimizer_state",)),
    M("language: a word model's loss reported per token", "zoo/models/lstm.py",
      "text_decoder=model, text_unit=unit,", "text_decoder=model, text_unit=\"token\",",
      ("tests/test_metrics.py::test_language_families_say_what_their_loss_counts",)),
    M("cli: argparse's refusals printed after its usage block", "zoo/config.py",
      "    def error(self, message: str):", "    def _error(self, message: str):",
      ("tests/test_bench.py::test_bench_main_refuses_bad_options_in_one_line_before_running",)),
    M("settings: values at or above their bound accepted (Adam's b1 = 1)", "zoo/core/settings.py",
      "        if key in values and not values[key] < high:",
      "        if key in values and values[key] > high:",
      ("tests/test_cli_errors.py::test_bad_input_is_one_or_two_lines_and_never_a_traceback",)),
    # ---- the LSTM layer's hand-written backward (zoo/models/lstm.py)
    M("lstm: forget gate's derivative without its sigmoid' factor", "zoo/models/lstm.py",
      "dc * cp * f * (1 - f)", "dc * cp * f",
      ("tests/test_lstm.py::test_the_lstm_layer_is_flaxs_optimized_lstm_cell_in_values_and_gradients",)),
    M("lstm: recurrent weight gradient from h_t, not h_(t-1)", "zoo/models/lstm.py",
      "dw_h = flat(h_prev).T @ flat(dz)", "dw_h = flat(hs.astype(w_h.dtype)).T @ flat(dz)",
      ("tests/test_lstm.py::test_the_lstm_layer_is_flaxs_optimized_lstm_cell_in_values_and_gradients",)),
    M("lstm: cuDNN's input weights packed untransposed", "zoo/models/lstm.py",
      "jnp.concatenate([w_i.T.ravel(), w_h.T.ravel(),",
      "jnp.concatenate([w_i.ravel(), w_h.T.ravel(),",
      ("tests/test_lstm.py::test_the_cudnn_path_is_the_scan_in_values_and_gradients",)),
    M("lstm: cuDNN's final carry returned as (h, c)", "zoo/models/lstm.py",
      "return (c[0], h[0]), hs", "return (h[0], c[0]), hs",
      ("tests/test_lstm.py::test_the_cudnn_path_is_the_scan_in_values_and_gradients",)),
    M("lstm: cuDNN chosen whatever the dtype", "zoo/models/lstm.py",
      "return parallel.on_cuda() and jnp.dtype(dtype) == jnp.float32",
      "return parallel.on_cuda()",
      ("tests/test_lstm.py::test_the_lstm_implementation_is_the_scan_on_cpu_and_a_named_one_is_checked",)),
    M("lstm: cuDNN chosen on a mesh of several devices", "zoo/models/lstm.py",
      "return \"cudnn\" if cudnn_applies(dtype) and per_device else \"scan\"",
      "return \"cudnn\" if cudnn_applies(dtype) else \"scan\"",
      ("tests/test_lstm.py::test_the_lstm_implementation_is_the_scan_on_cpu_and_a_named_one_is_checked", "tests/test_lstm.py::test_cudnn_runs_where_each_device_runs_the_whole_step")),
    # ---- where each device runs the whole step (zoo/core/parallel.py)
    M("parallel: single's step not traced as one device's", "zoo/core/parallel.py",
      "return jax.jit(self._traced(fn), donate_argnums=(0,) if donate_state else ())",
      "return jax.jit(fn, donate_argnums=(0,) if donate_state else ())",
      ("tests/test_lstm.py::test_cudnn_runs_where_each_device_runs_the_whole_step",)),
    M("parallel: a mesh's step not traced under the mesh's tracing()", "zoo/core/parallel.py",
      "return jax.jit(self._traced(with_constraints),", "return jax.jit(with_constraints,",
      ("tests/test_lstm.py::test_cudnn_runs_where_each_device_runs_the_whole_step",)),
    M("parallel: a mesh's step taken for one device's", "zoo/core/parallel.py",
      "    def devices_per_program(self) -> int:\n        return self.num_shards",
      "    def devices_per_program(self) -> int:\n        return 1",
      ("tests/test_lstm.py::test_cudnn_runs_where_each_device_runs_the_whole_step",)),
    # ---- cuDNN's attention on one CUDA GPU (zoo/models/transformer.py)
    M("transformer: cuDNN's attention chosen in float32", "zoo/models/transformer.py",
      "jnp.dtype(dtype) in (jnp.float16, jnp.bfloat16)", "True",
      ("tests/test_transformer.py::test_cudnn_attention_is_chosen_on_one_cuda_gpu_where_it_trains_the_dtype_and_shape",)),
    M("transformer: cuDNN's attention given 256-wide heads before compute capability 9.0",
      "zoo/models/transformer.py",
      "largest_head = 256 if capability >= (9, 0) else 128", "largest_head = 256",
      ("tests/test_transformer.py::test_cudnn_attention_is_chosen_on_one_cuda_gpu_where_it_trains_the_dtype_and_shape",)),
    M("transformer: cuDNN's attention chosen at an odd number of tokens",
      "zoo/models/transformer.py", "head_dim <= largest_head and T % 2 == 0)",
      "head_dim <= largest_head)",
      ("tests/test_transformer.py::test_cudnn_attention_is_chosen_on_one_cuda_gpu_where_it_trains_the_dtype_and_shape",)),
    M("transformer: cuDNN's attention chosen on a mesh of several devices",
      "zoo/models/transformer.py",
      "return \"cudnn\" if per_device and cudnn_attention_applies(dtype, head_dim, T) else \"xla\"",
      "return \"cudnn\" if cudnn_attention_applies(dtype, head_dim, T) else \"xla\"",
      ("tests/test_transformer.py::test_cudnn_attention_is_chosen_on_one_cuda_gpu_where_it_trains_the_dtype_and_shape",)),
    M("transformer: the chosen attention kernel not passed to JAX", "zoo/models/transformer.py",
      "is_causal=True, implementation=kernel)", "is_causal=True, implementation=implementation)",
      ("tests/test_transformer.py::test_the_model_asks_jax_for_the_chosen_attention_kernel",)),
)


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


def _pytest(copy: Path, tests: tuple[str, ...], timeout: int, workers: int = 0,
            slow: bool = False) -> tuple[int, str]:
    """pytest's exit status and last line, after the names of any failed tests. One process by
    default: with pytest-xdist workers, a failure under -x exits 2 (interrupted), not 1."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    marks = ["-m", ""] if slow else []  # pyproject's addopts leave slow tests out
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                              "-n", str(workers), *marks, *tests], cwd=copy, env=env,
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    lines = (out.stdout + out.stderr).strip().splitlines()
    failed = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return out.returncode, "; ".join([*failed, *lines[-1:]])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="mutations to run (default: all)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(m.name for m in MUTATIONS))
        return 0
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTATIONS}
    if unknown:
        print(f"unknown mutations: {', '.join(sorted(unknown))}; see --list", file=sys.stderr)
        return 2
    failures = 0
    with tempfile.TemporaryDirectory(prefix="zoo-mutation-") as tmp:
        copy = Path(tmp) / "repo"
        _copy_checkout(copy)
        # The copy has no ../shared beside it: point the tests at the checkout's.
        os.environ.setdefault("ZOO_SHARED_DATA", str(ROOT.parent / "shared" / "data"))
        # One compilation cache for every run: what a mutation leaves unchanged compiles once
        # (a cached program is keyed by its HLO, so a mutated one never hits an old entry).
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(tmp) / "xla-cache"))
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
        where = subprocess.run([sys.executable, "-c", "import zoo; print(zoo.__file__)"],
                               cwd=copy, env={**os.environ, "PYTHONPATH": str(copy)},
                               capture_output=True, text=True).stdout.strip()
        if not where.startswith(str(copy)):
            print(f"error: the copy's tests would import zoo from {where}, not the copy",
                  file=sys.stderr)
            return 2
        baseline = sorted({t for m in chosen for t in m.tests if not m.slow})
        slow_baseline = sorted({t for m in chosen for t in m.tests if m.slow})
        t0 = time.time()
        rc, last = _pytest(copy, tuple(baseline), args.timeout * 3, workers=2) if baseline \
            else (0, "")
        if rc == 0 and slow_baseline:
            rc, last = _pytest(copy, tuple(slow_baseline), args.timeout * 3, workers=2, slow=True)
        baseline += slow_baseline
        if rc != 0:
            print(f"error: the tests do not pass unmutated ({last})", file=sys.stderr)
            return 2
        print(f"baseline: {len(baseline)} test selections pass unmutated ({time.time() - t0:.0f} s)",
              flush=True)
        for m in chosen:
            target = copy / m.path
            original = target.read_text()
            if original.count(m.old) != 1:
                print(f"error     {m.name}: its snippet occurs {original.count(m.old)} times in "
                      f"{m.path} (the code moved: update the mutation)", flush=True)
                failures += 1
                continue
            target.write_text(original.replace(m.old, m.new))
            t0 = time.time()
            try:
                rc, last = _pytest(copy, m.tests, args.timeout, slow=m.slow)
            finally:
                target.write_text(original)
            verdict = {1: "caught", 0: "survived"}.get(rc, "error")
            failures += verdict != "caught"
            print(f"{verdict:9} {m.name}  [{m.path}; {time.time() - t0:.0f} s"
                  + ("" if verdict == "caught" else f"; {last}") + "]", flush=True)
    print(f"{len(chosen) - failures} of {len(chosen)} mutations caught")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
