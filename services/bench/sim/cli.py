"""`alise bench sim`: the discrete-event simulator's policy comparison (JSON + PNG).

    alise bench sim --trace sharegpt --preset llama3-8b-h100 --kv-cache-gb 4 --policies fcfs,alise,srpt-oracle
    alise bench sim --method finite-sweep --trace sharegpt --preset llama3-8b-h100 --kv-cache-gb 8
    alise bench sim --method finite-sweep --trace alpaca --preset llama3-8b-h100 --prediction noisy-oracle --tau 0.6
    alise bench sim --kv-cache-gb 4 --policies alise,fcfs --kv-offload recompute,swap-compress --host-tier-gb 64

Default method: steady state (steady_cli.py, steady_sweep.py: seeds, windowed metrics, loads of the
measured capacity, SLO attainment and tails). --method finite-sweep, the earlier request-rate sweep
over one finite trace: prints one line per (rate, policy, offload mode) and a table of sustainable
rates per latency bound; saves <out-dir>/sim_<trace>_<preset>[_host<N>gb].json and .png (normalized latency vs rate, one line
per policy, or per policy+mode when swap modes are swept).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from services.bench.plots import plot_latency_vs_rate
from services.bench.results import build_report, write_report
from services.bench.sim import capacity, steady_cli
from services.bench.sim.gpu_presets import BLOCK_SIZE_TOKENS, GB, PRESETS, KvDtype, LinearCostModel
from services.bench.sim.kv_codecs import INT4_RELATIVE_ERROR, INT8_RELATIVE_ERROR, CodecTimes, KvLayout
from services.bench.sim.kv_offload import (
    DEFAULT_HOST_LINK_BYTES_PER_S,
    OFFLOAD_MODES,
    KvOffloadConfig,
    OffloadMode,
)
from services.bench.sim.model_predictions import (
    DEFAULT_FEEDBACK_FILES,
    DEFAULT_MODEL_DIR,
    TRACE_NAME,
    heldout_workload,
    load_heldout_set,
)
from services.bench.sim.predictions import constant_distributions, kendall_tau, noisy_oracle_distributions
from services.bench.sim.simulator import EngineShape
from services.bench.sim.sweep import SweepConfig, SweepResult, run_sweep
from services.bench.steady_state import SteadyStateWindow
from services.bench.workload import TRACE_NAMES, load_trace
from services.common import arg_types
from services.common.cli_errors import print_error
from services.engine.scheduler import POLICY_NAMES, StepCostCoefficients
from services.memory.eviction_policy import KvCodec

PREDICTION_MODES = ("noisy-oracle", "none", "shipped-predictor")
DEFAULT_HOST_TIER_GB = 64.0
DEFAULT_LINK_GB_PER_S = DEFAULT_HOST_LINK_BYTES_PER_S / GB
DEFAULT_KV_ERROR_BUDGET = 0.1  # relative Frobenius error: admits int8 and int4 at their measured errors


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("sim", help="discrete-event simulator: policies vs request rate on a GPU cost model")
    parser.add_argument(
        "--trace",
        choices=(*TRACE_NAMES, TRACE_NAME),
        default="sharegpt",
        help=f"{TRACE_NAME}: SmolLM2's own lengths on the prompts the shipped predictor held out (model_predictions.py)",
    )
    parser.add_argument("--num-requests", type=arg_types.positive_int, default=8000)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama3-8b-h100")
    parser.add_argument(
        "--kv-cache-gb", type=arg_types.positive_float, help="KV pool size (default: what the card holds)"
    )
    parser.add_argument(
        "--kv-dtype",
        choices=[d.value for d in KvDtype],
        default=KvDtype.BF16.value,
        help="KV pool dtype of the roofline presets (int8: 1.97x the tokens, gpu_presets.py)",
    )
    parser.add_argument(
        "--int8-attention-efficiency",
        type=arg_types.positive_float,
        default=1.0,
        help="int8 attention's achieved bandwidth relative to bf16's (roofline: 1)",
    )
    parser.add_argument(
        "--cost-coefficients", help="base_s,per_token_s,per_kv_token_s fitted on measured steps (replaces the roofline)"
    )
    parser.add_argument("--policies", default="fcfs,alise,srpt-oracle,mlfq", help="comma-separated")
    parser.add_argument("--rates", default="", help="comma-separated req/s (default: fractions of the capacity)")
    parser.add_argument("--burstiness", type=arg_types.positive_float, default=1.0, help="gamma shape; 1 = Poisson")
    parser.add_argument(
        "--prediction",
        choices=PREDICTION_MODES,
        default="noisy-oracle",
        help=f"shipped-predictor: the shipped default predictor's own predictions (needs --trace {TRACE_NAME})",
    )
    parser.add_argument(
        "--feedback-file",
        type=pathlib.Path,
        action="append",
        help=f"{TRACE_NAME}: feedback JSONL the predictor trained on (repeatable; default: the shipped model's)",
    )
    parser.add_argument("--tau", type=float, default=0.6, help="Kendall's tau of the noisy oracle")
    parser.add_argument("--bounds", default="2,4,8", help="latency bounds, multiples of the unloaded mean")
    parser.add_argument("--slo-multiple", type=arg_types.positive_float, default=4.0, help="goodput SLO multiple")
    parser.add_argument("--max-num-seqs", type=arg_types.positive_int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=arg_types.positive_int, default=2048)
    parser.add_argument("--max-model-len", type=arg_types.positive_int, default=4096)
    parser.add_argument("--max-wait-s", type=arg_types.positive_float, default=60.0)
    parser.add_argument("--seed", type=arg_types.seed, default=0)
    _add_offload_flags(parser)
    steady_cli.add_flags(parser)
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("runs"))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        policies = _names(args.policies, POLICY_NAMES)
        cost = _cost_model(args)
        rates = tuple(float(x) for x in args.rates.split(",") if x)
        bounds = tuple(float(x) for x in args.bounds.split(",") if x)
        modes = _names(args.kv_offload, OFFLOAD_MODES, what="KV offload modes")
        offload = _offload_config(args, modes)
        if args.method == "steady-state":
            return _run_steady(args, policies, cost, modes, offload)
        if args.method == "capacity":
            return _run_capacity(args)
        config = SweepConfig(policies, rates, args.burstiness, bounds, args.slo_multiple, args.seed, modes, offload)
        trace, predictions, reached_tau = _workload(args, args.seed)
    except (ValueError, FileNotFoundError) as error:
        print_error("alise bench sim", str(error))
        return 2
    shape = _shape(args)
    print(
        f"{args.trace}: {len(trace)} requests; {cost.name}: {cost.num_kv_blocks} KV blocks of 16 tokens; "
        f"predictions {args.prediction} (tau {reached_tau:.3f}); KV offload {', '.join(modes)}"
    )
    if offload is not None:
        print(_offload_line(offload))
    result = run_sweep(trace, predictions, cost=cost, shape=shape, config=config)
    _print_bounds(result)
    # Not Path.with_suffix: a name like "..._host0.5gb" has a dot that is not a suffix.
    stem = f"sim_{args.trace}_{cost.name}{_offload_suffix(args, offload)}"
    json_path, png_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.png"
    settings = {
        "trace": args.trace,
        "num_requests": len(trace),
        "cost_model": dataclasses.asdict(cost),
        "engine": shape,
        "sweep": config,
        "prediction": args.prediction,
        "target_tau": args.tau,
        "reached_tau": reached_tau,
    }
    write_report(json_path, build_report("simulator", settings, {"result": result}))
    labels = [config.label(policy, mode) for policy in policies for mode in modes]
    curves = {label: [pt.rate_point() for pt in result.points if pt.label == label] for label in labels}
    plot_latency_vs_rate(
        curves,
        bounds_s_per_token=[b.bound_s_per_token for b in result.bounds],
        title=f"{args.trace} on {cost.name} (tau {reached_tau:.2f})",
        path=png_path,
    )
    print(f"saved {json_path} and {png_path}")
    return 0


def _shape(args: argparse.Namespace) -> EngineShape:
    return EngineShape(
        args.max_num_seqs, args.max_num_batched_tokens, args.max_model_len, args.max_wait_s, args.aging_horizon_s
    )


def _run_steady(args: argparse.Namespace, policies, cost, modes: tuple[str, ...], offload) -> int:
    """The steady-state method (steady_cli.py); raises ValueError on bad flags before any run."""
    if len(modes) != 1:
        raise ValueError(f"the steady-state method takes one --kv-offload mode, got {list(modes)}")
    config = dataclasses.replace(steady_cli.steady_config(args, policies), offload=offload)
    workloads = {}

    def workload(seed: int):
        trace, predictions, reached_tau = _workload(args, seed)
        workloads[seed] = reached_tau
        print(f"seed {seed}: {args.trace} {len(trace)} requests; predictions {args.prediction} (tau {reached_tau:.3f})")
        return trace, predictions

    print(f"{cost.name}: {cost.num_kv_blocks} KV blocks of 16 tokens; KV offload {modes[0]}")
    stem = f"sim_{args.trace}_{cost.name}{_offload_suffix(args, offload)}"
    settings = {
        "trace": args.trace,
        "num_requests": args.num_requests,
        "cost_model": dataclasses.asdict(cost),
        "engine": _shape(args),
        "prediction": args.prediction,
        "target_tau": args.tau,
        "reached_tau_by_seed": workloads,
        "title": f"{args.trace} on {cost.name}, steady state ({args.prediction}, tau {args.tau:g})",
    }
    return steady_cli.run_method(args, config, workload, cost=cost, shape=_shape(args), settings=settings, stem=stem)


def _run_capacity(args: argparse.Namespace) -> int:
    """The capacity method (capacity.py): one trace (--seed), each configuration's own cost model and host tier."""
    configs = capacity.parse_configs(args.configs, POLICY_NAMES, [d.value for d in KvDtype])
    fractions = tuple(float(x) for x in args.capacity_fractions.split(",") if x)
    bounds = tuple(float(x) for x in args.bounds.split(",") if x)
    window = SteadyStateWindow(args.warmup_fraction, args.drain_fraction)
    trace, predictions, reached_tau = _workload(args, args.seed)

    def make(config: capacity.CapacityConfig):
        own = argparse.Namespace(**{**vars(args), "kv_dtype": config.kv_dtype})
        return _cost_model(own), _offload_config(own, (config.offload_mode,))

    print(
        f"{args.trace}: {len(trace)} requests (seed {args.seed}); predictions {args.prediction} (tau {reached_tau:.3f})"
    )
    unloaded, figures = capacity.run_capacity(
        trace,
        predictions,
        configs,
        make=make,
        shape=_shape(args),
        bound_multiples=bounds,
        fractions=fractions,
        window=window,
        seed=args.seed,
        concurrency=args.capacity_concurrency or args.max_num_seqs,
    )
    lines = capacity.table_lines(figures)
    print("\n" + "\n".join(lines))
    stem = f"sim_{args.trace}_{_cost_model(argparse.Namespace(**{**vars(args), 'kv_dtype': 'bf16'})).name}_capacity"
    json_path, png_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.png"
    settings = {
        "trace": args.trace,
        "num_requests": len(trace),
        "seed": args.seed,
        "engine": _shape(args),
        "prediction": args.prediction,
        "reached_tau": reached_tau,
        "window": window,
        "fractions": fractions,
    }
    report = {"unloaded_mean_s_per_token": unloaded, "figures": figures, "table": lines}
    write_report(json_path, build_report("simulator-capacity", settings, report))
    plot_latency_vs_rate(
        {f.config.label: f.points for f in figures},
        bounds_s_per_token=[m * unloaded for m in bounds],
        title=f"{args.trace}, {stem[4:]}: steady state",
        path=png_path,
    )
    print(f"saved {json_path} and {png_path}")
    return 0


def _names(text: str, known, what: str = "policies") -> tuple[str, ...]:
    names = tuple(name for name in text.split(",") if name)
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown}; known: {list(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} repeated: {list(names)}")
    return names


def _add_offload_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kv-offload",
        default=OffloadMode.RECOMPUTE.value,
        help=f"comma-separated KV offload modes, each swept (one curve per policy+mode): {', '.join(OFFLOAD_MODES)}",
    )
    parser.add_argument(
        "--host-tier-gb",
        type=arg_types.positive_float,
        default=DEFAULT_HOST_TIER_GB,
        help="host memory for swapped KV (swap modes)",
    )
    parser.add_argument(
        "--host-slot-kb",
        type=arg_types.positive_float,
        help="host tier allocation unit (default: one full-precision KV block of the preset's model)",
    )
    parser.add_argument(
        "--host-link-gb-per-s",
        type=arg_types.positive_float,
        default=DEFAULT_LINK_GB_PER_S,
        help="effective host<->device copy rate per direction (H100 PCIe Gen5 pinned copies: ~25)",
    )
    parser.add_argument(
        "--kv-error-budget",
        type=arg_types.non_negative_float,
        default=DEFAULT_KV_ERROR_BUDGET,
        help="relative Frobenius error a lossy codec may add (swap-compress)",
    )
    parser.add_argument(
        "--int8-error",
        type=arg_types.non_negative_float,
        default=INT8_RELATIVE_ERROR,
        help="measured relative error of the int8 codec on real KV",
    )
    parser.add_argument(
        "--int4-error",
        type=arg_types.non_negative_float,
        default=INT4_RELATIVE_ERROR,
        help="measured relative error of the int4 codec on real KV",
    )
    parser.add_argument(
        "--plan-rpc-ms",
        type=arg_types.non_negative_float,
        default=0.0,
        help="memory service round trip charged per eviction event (gRPC loopback: ~0.7)",
    )
    parser.add_argument(
        "--no-prefetch",
        action="store_true",
        help="swap-ins are not started ahead of a restore: each stalls its step in full",
    )


def _offload_config(args: argparse.Namespace, modes: tuple[str, ...]) -> KvOffloadConfig | None:
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


def _offload_suffix(args: argparse.Namespace, offload: KvOffloadConfig | None) -> str:
    """What tells apart the files of runs with different host tier settings."""
    if offload is None:
        return ""
    link = "" if args.host_link_gb_per_s == DEFAULT_LINK_GB_PER_S else f"_link{args.host_link_gb_per_s:g}gbps"
    rpc = f"_rpc{args.plan_rpc_ms:g}ms" if args.plan_rpc_ms else ""
    return f"_host{args.host_tier_gb:g}gb{link}{'_noprefetch' if args.no_prefetch else ''}{rpc}"


def _offload_line(offload: KvOffloadConfig) -> str:
    sizes = ", ".join(f"{codec.value} {offload.layout.block_bytes(codec) / 2**20:.3f}" for codec in KvCodec)
    return (
        f"host tier {offload.host_tier_bytes / GB:g} GB in {offload.num_host_slots} slots "
        f"of {offload.host_slot_bytes} B; "
        f"link {offload.times.link_bytes_per_s / GB:g} GB/s; block MiB: {sizes}; error budget "
        f"{offload.max_relative_error:g} (int8 {offload.int8_relative_error:g}, int4 {offload.int4_relative_error:g}); "
        f"prefetch {'on' if offload.prefetch else 'off'}; plan call {offload.plan_latency_s * 1e3:g} ms"
    )


def _cost_model(args):
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
    base, per_token, per_kv = (float(x) for x in args.cost_coefficients.split(","))
    return LinearCostModel(f"{preset.name}-fitted", StepCostCoefficients(base, per_token, per_kv), preset.num_kv_blocks)


def _workload(args, seed: int):
    """(trace, predictions, Kendall's tau of the predicted means) for --trace, --prediction and seed."""
    if args.trace == TRACE_NAME:
        heldout = load_heldout_set(DEFAULT_MODEL_DIR, args.feedback_file or DEFAULT_FEEDBACK_FILES)
        trace, shipped = heldout_workload(
            heldout, num_requests=args.num_requests, seed=seed, max_model_len=args.max_model_len
        )
        if args.prediction == "shipped-predictor":
            truth = [t.num_output_tokens for t in trace]
            return trace, shipped, kendall_tau([d.mean_tokens for d in shipped], truth)
    elif args.prediction == "shipped-predictor":
        raise ValueError(f"--prediction shipped-predictor needs --trace {TRACE_NAME} (its prompts were predicted)")
    else:
        trace = load_trace(args.trace, num_requests=args.num_requests, seed=seed, max_model_len=args.max_model_len)
    if args.prediction == "none":
        mean = sum(t.num_output_tokens for t in trace) / len(trace)
        return trace, constant_distributions(len(trace), mean), 0.0
    predictions, reached_tau = noisy_oracle_distributions(
        [t.num_output_tokens for t in trace], target_tau=args.tau, seed=seed
    )
    return trace, predictions, reached_tau


def _print_bounds(result: SweepResult) -> None:
    print(
        f"\nsustainable request rate (req/s) under mean normalized latency <= multiple x unloaded "
        f"({result.unloaded_mean_s_per_token * 1e3:.2f} ms/token)"
    )
    for bound in result.bounds:
        rates = "  ".join(
            f"{p} {r:.3f} (x{bound.ratio_to_fcfs[p]:.2f})" for p, r in bound.sustainable_rate_per_s.items()
        )
        by_mode = bound.oracle_gain_recovered
        recovered = "".join(
            f"  alise recovers {share:.0%} of oracle gain{'' if len(by_mode) == 1 else f' ({mode})'}"
            for mode, share in by_mode.items()
            if share is not None
        )
        print(f"  {bound.multiple:g}x: {rates}{recovered}")
        if bound.ratio_to_recompute:
            ratios = "  ".join(f"{label} x{ratio:.2f}" for label, ratio in bound.ratio_to_recompute.items())
            print(f"       vs the same policy recomputing: {ratios}")
