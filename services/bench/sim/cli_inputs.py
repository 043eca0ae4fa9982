"""`alise bench sim`'s parsed flags as simulator inputs: policy names, engine shape, cost model, workload and
predictions, KV host tier; ValueError on a bad value (cli.py reports it as exit status 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from services.bench.sim.cli_flags import DEFAULT_LINK_GB_PER_S, REFERENCE_TRACES
from services.bench.sim.feedback_texts import FeedbackTexts
from services.bench.sim.gpu_presets import BLOCK_SIZE_TOKENS, GB, PRESETS, KvDtype, LinearCostModel
from services.bench.sim.kv_codecs import CodecTimes, KvLayout
from services.bench.sim.kv_offload import KvOffloadConfig, OffloadMode
from services.bench.sim.model_predictions import (
    DEFAULT_MODEL_DIR,
    TRACE_NAME,
    heldout_workload,
    load_heldout_set,
)
from services.bench.sim.predictions import constant_distributions, kendall_tau, noisy_oracle_distributions
from services.bench.sim.reference_heldout import (
    REFERENCE_TRACE_NAMES,
    ReferenceTrace,
    load_reference_heldout,
    reference_heldout_workload,
)
from services.bench.sim.shipped_feedback import (
    LENGTHS_DIR_IN_REPO,
    not_in_repository,
    not_restorable_reason,
    shipped_feedback_files,
    trained_feedback_files,
)
from services.bench.sim.simulator import EngineShape
from services.bench.workload import load_trace, scale_trace
from services.common.arg_types import comma_list
from services.engine.scheduler import StepCostCoefficients
from services.memory.eviction_policy import KvCodec


def parse_names(text: str, known, what: str = "policies") -> tuple[str, ...]:
    names = comma_list(text, str)
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown}; known: {list(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} repeated: {list(names)}")
    return names


def shape(args: argparse.Namespace) -> EngineShape:
    return EngineShape(
        args.max_num_seqs,
        args.max_num_batched_tokens,
        args.max_model_len,
        args.max_wait_s,
        args.aging_horizon_s,
        args.ttft_target_s,
        args.ttft_lead_s,
        args.readmit_headroom_tokens,
    )


def offload_config(args: argparse.Namespace, modes: tuple[str, ...]) -> KvOffloadConfig | None:
    """The host tier of the preset's model and GPU; None when only recompute is swept."""
    swap_modes = [OffloadMode(mode) for mode in modes if mode != OffloadMode.RECOMPUTE.value]
    if not swap_modes:
        return None
    preset = PRESETS[args.preset]
    model = preset.model
    pool = dataclasses.replace(preset, kv_dtype=KvDtype(args.kv_dtype))
    full_bytes = pool.kv_bytes_per_token / (model.kv_bytes_per_token / 2)  # per element, the pool's own format
    layout = KvLayout(
        model.num_layers, model.num_kv_heads, model.head_dim, BLOCK_SIZE_TOKENS, full_bytes_per_element=full_bytes
    )
    times = CodecTimes(args.host_link_gb_per_s * GB, preset.gpu.bandwidth_bytes_per_s * preset.bandwidth_efficiency)
    slot_bytes = int(args.host_slot_kb * 1024) if args.host_slot_kb else layout.block_bytes(KvCodec.FULL)
    return KvOffloadConfig(
        swap_modes[0],
        layout,
        times,
        int(args.host_tier_gb * GB),
        slot_bytes,
        args.kv_error_budget,
        args.int8_error,
        args.int4_error,
        not args.no_prefetch,
        args.plan_rpc_ms / 1e3,
    )


def offload_suffix(args: argparse.Namespace, offload: KvOffloadConfig | None) -> str:
    """What tells apart the files of runs with different host tier settings."""
    if offload is None:
        return ""
    link = "" if args.host_link_gb_per_s == DEFAULT_LINK_GB_PER_S else f"_link{args.host_link_gb_per_s:g}gbps"
    rpc = f"_rpc{args.plan_rpc_ms:g}ms" if args.plan_rpc_ms else ""
    return f"_host{args.host_tier_gb:g}gb{link}{'_noprefetch' if args.no_prefetch else ''}{rpc}"


def offload_line(offload: KvOffloadConfig) -> str:
    sizes = ", ".join(f"{codec.value} {offload.layout.block_bytes(codec) / 2**20:.3f}" for codec in KvCodec)
    return (
        f"host tier {offload.host_tier_bytes / GB:g} GB in {offload.num_host_slots} slots "
        f"of {offload.host_slot_bytes} B; "
        f"link {offload.times.link_bytes_per_s / GB:g} GB/s; block MiB: {sizes}; error budget "
        f"{offload.max_relative_error:g} (int8 {offload.int8_relative_error:g}, int4 {offload.int4_relative_error:g}); "
        f"prefetch {'on' if offload.prefetch else 'off'}; plan call {offload.plan_latency_s * 1e3:g} ms"
    )


def cost_model(args):
    preset = PRESETS[args.preset]
    if args.kv_cache_gb:
        preset = dataclasses.replace(
            preset, name=f"{preset.name}-kv{args.kv_cache_gb:g}gb", kv_cache_bytes_override=args.kv_cache_gb * GB
        )
    if args.kv_dtype != KvDtype.BF16.value:
        preset = dataclasses.replace(
            preset,
            name=f"{preset.name}-{args.kv_dtype}",
            kv_dtype=KvDtype(args.kv_dtype),
            int8_attention_efficiency=args.int8_attention_efficiency,
        )
    if not args.cost_coefficients:
        return preset
    base, per_token, per_kv = comma_list(args.cost_coefficients, float)
    return LinearCostModel(f"{preset.name}-fitted", StepCostCoefficients(base, per_token, per_kv), preset.num_kv_blocks)


def workload(args, seed: int):
    """(trace, predictions, Kendall's tau of the predicted means) for --trace, --prediction and seed."""
    if args.trace == TRACE_NAME or args.trace in REFERENCE_TRACE_NAMES:
        if args.length_divisor != 1.0 or args.max_prompt_tokens or args.max_output_tokens:
            raise ValueError(f"--length-divisor and the token caps apply to the dataset traces, not {args.trace}")
        trace, shipped = _heldout_trace(args, seed)
        if args.prediction == "shipped-predictor":
            truth = [t.num_output_tokens for t in trace]
            return trace, shipped, kendall_tau([d.mean_tokens for d in shipped], truth)
    elif args.prediction == "shipped-predictor":
        raise ValueError(
            f"--prediction shipped-predictor needs --trace {TRACE_NAME} or {REFERENCE_TRACES} (their prompts were predicted)"
        )
    else:
        trace = load_trace(args.trace, num_requests=args.num_requests, seed=seed, max_model_len=args.max_model_len)
        if args.length_divisor != 1.0 or args.max_prompt_tokens or args.max_output_tokens:
            trace = scale_trace(
                trace,
                divisor=args.length_divisor,
                max_prompt_tokens=args.max_prompt_tokens or args.max_model_len,
                max_output_tokens=args.max_output_tokens or args.max_model_len,
            )
    if args.prediction == "none":
        mean = sum(t.num_output_tokens for t in trace) / len(trace)
        return trace, constant_distributions(len(trace), mean), 0.0
    predictions, reached_tau = noisy_oracle_distributions(
        [t.num_output_tokens for t in trace], target_tau=args.tau, seed=seed
    )
    return trace, predictions, reached_tau


def _heldout_trace(args, seed: int):
    """A held-out trace (SmolLM2's, ShareGPT's or Alpaca's lengths) with the shipped predictor's distributions."""
    sizes = {"num_requests": args.num_requests, "seed": seed, "max_model_len": args.max_model_len}
    texts = feedback_texts(args)
    feedback_files = _feedback_files(args, texts)
    if args.trace != TRACE_NAME:
        trace = ReferenceTrace(args.trace)
        heldout = load_reference_heldout(trace, DEFAULT_MODEL_DIR, feedback_files, texts)
        return reference_heldout_workload(trace, heldout, **sizes)
    return heldout_workload(load_heldout_set(DEFAULT_MODEL_DIR, feedback_files), **sizes)


def _feedback_files(args, texts: FeedbackTexts) -> list[pathlib.Path]:
    """--feedback-file's files (each must exist); without it the shipped model's own, restored from the
    repository; none under collect-list, which reads no feedback file. ValueError (exit 2, one line) when
    they cannot be had."""
    if texts is not FeedbackTexts.FILES:
        return []
    if args.feedback_file:
        files = list(args.feedback_file)  # pathlib.Path each (the flag's type)
        require_feedback_files(files, args.trace)
        return files
    try:
        return shipped_feedback_files(DEFAULT_MODEL_DIR)
    except FileNotFoundError as error:
        raise ValueError(f"{error}; {_without_feedback_files(args.trace)}") from error


def feedback_texts(args) -> FeedbackTexts:
    """Which texts count as feedback for --trace. smollm2-heldout is the feedback files' own rows, so it
    reads them whatever --feedback-texts says (FILES); ValueError where --feedback-file would be ignored
    (collect-list, the default, reads no feedback file)."""
    if args.trace == TRACE_NAME:
        return FeedbackTexts.FILES
    texts = FeedbackTexts(args.feedback_texts)
    if texts is FeedbackTexts.COLLECT_LIST and args.feedback_file:
        raise ValueError(
            f"--feedback-file needs --feedback-texts {FeedbackTexts.FILES} (--feedback-texts {texts}, the default, "
            "reads no feedback file)"
        )
    return texts


def require_feedback_files(files: list[pathlib.Path], trace: str) -> None:
    """ValueError (exit 2, one line) naming the first missing feedback file and what runs instead: the
    shipped model's own files when the repository restores them all, else (naming those it cannot)
    collect-list for the reference traces and nothing for smollm2-heldout, which is those files' rows."""
    missing = next((path for path in files if not path.is_file()), None)
    if missing is None:
        return
    shipped = trained_feedback_files(DEFAULT_MODEL_DIR)
    unrestorable = not_in_repository(shipped)
    if not shipped:
        instead = f"the shipped model trained on no feedback file; {_without_feedback_files(trace)}"
    elif unrestorable:
        instead = f"the shipped model's feedback files {not_restorable_reason(unrestorable)}; "
        instead += _without_feedback_files(trace)
    else:
        names = ", ".join(file.name for file in shipped)
        instead = f"leave out --feedback-file for the shipped model's ({names}, restored from {LENGTHS_DIR_IN_REPO})"
        instead += "" if trace == TRACE_NAME else f", or {_collect_list_advice(trace)}"
    raise ValueError(f"feedback file {missing} not found: {instead}")


def _without_feedback_files(trace: str) -> str:
    """What runs without any feedback file: collect-list for a reference trace; for smollm2-heldout, made of
    the feedback files' rows, only another trace."""
    if trace == TRACE_NAME:
        return (
            f"{TRACE_NAME} is those files' rows and cannot be rebuilt without them; use --trace {REFERENCE_TRACES} "
            f"(--feedback-texts {FeedbackTexts.COLLECT_LIST}, the default)"
        )
    return _collect_list_advice(trace)


def _collect_list_advice(trace: str) -> str:
    return f"use --feedback-texts {FeedbackTexts.COLLECT_LIST} (the default) for {trace}"
