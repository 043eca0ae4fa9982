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

This file runs the methods; the flags are defined in cli_flags.py (and steady_cli.py) and turned into
simulator inputs (cost model, workload, host tier) in cli_inputs.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from services.bench.plots import plot_latency_vs_rate
from services.bench.results import build_report, write_report
from services.bench.sim import capacity, cli_flags, cli_inputs, steady_cli
from services.bench.sim.gpu_presets import KvDtype
from services.bench.sim.kv_offload import OFFLOAD_MODES
from services.bench.sim.sweep import SweepConfig, SweepResult, run_sweep
from services.bench.steady_state import SteadyStateWindow
from services.common.arg_types import comma_list
from services.common.cli_errors import print_error
from services.engine.scheduler import POLICY_NAMES


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("sim", help="discrete-event simulator: policies vs request rate on a GPU cost model")
    cli_flags.add_flags(parser)
    steady_cli.add_flags(parser)
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("runs"))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        policies = cli_inputs.parse_names(args.policies, POLICY_NAMES)
        cost = cli_inputs.cost_model(args)
        rates = comma_list(args.rates, float)
        bounds = comma_list(args.bounds, float)
        modes = cli_inputs.parse_names(args.kv_offload, OFFLOAD_MODES, what="KV offload modes")
        offload = cli_inputs.offload_config(args, modes)
        if args.method == "steady-state":
            return _run_steady(args, policies, cost, modes, offload)
        if args.method == "capacity":
            return _run_capacity(args)
        config = SweepConfig(policies, rates, args.burstiness, bounds, args.slo_multiple, args.seed, modes, offload)
        trace, predictions, reached_tau = cli_inputs.workload(args, args.seed)
    except (ValueError, FileNotFoundError) as error:
        print_error("alise bench sim", str(error))
        return 2
    shape = cli_inputs.shape(args)
    print(
        f"{args.trace}: {len(trace)} requests; {cost.name}: {cost.num_kv_blocks} KV blocks of 16 tokens; "
        f"predictions {args.prediction} (tau {reached_tau:.3f}); KV offload {', '.join(modes)}"
    )
    if offload is not None:
        print(cli_inputs.offload_line(offload))
    result = run_sweep(trace, predictions, cost=cost, shape=shape, config=config)
    _print_bounds(result)
    # Not Path.with_suffix: a name like "..._host0.5gb" has a dot that is not a suffix.
    stem = f"sim_{args.trace}_{cost.name}{cli_inputs.offload_suffix(args, offload)}"
    json_path, png_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.png"
    settings = {
        "trace": args.trace,
        "num_requests": len(trace),
        "cost_model": dataclasses.asdict(cost),
        "engine": shape,
        "sweep": config,
        "prediction": args.prediction,
        "feedback_texts": args.feedback_texts,
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


def _run_steady(args: argparse.Namespace, policies, cost, modes: tuple[str, ...], offload) -> int:
    """The steady-state method (steady_cli.py); raises ValueError on bad flags before any run."""
    if len(modes) != 1:
        raise ValueError(f"the steady-state method takes one --kv-offload mode, got {list(modes)}")
    config = dataclasses.replace(steady_cli.steady_config(args, policies), offload=offload)
    workloads = {}

    def workload(seed: int):
        trace, predictions, reached_tau = cli_inputs.workload(args, seed)
        workloads[seed] = reached_tau
        print(f"seed {seed}: {args.trace} {len(trace)} requests; predictions {args.prediction} (tau {reached_tau:.3f})")
        return trace, predictions

    print(f"{cost.name}: {cost.num_kv_blocks} KV blocks of 16 tokens; KV offload {modes[0]}")
    stem = f"sim_{args.trace}_{cost.name}{cli_inputs.offload_suffix(args, offload)}"
    settings = {
        "trace": args.trace,
        "num_requests": args.num_requests,
        "cost_model": dataclasses.asdict(cost),
        "engine": cli_inputs.shape(args),
        "prediction": args.prediction,
        "feedback_texts": args.feedback_texts,
        "target_tau": args.tau,
        "reached_tau_by_seed": workloads,
        "title": f"{args.trace} on {cost.name}, steady state ({args.prediction}, tau {args.tau:g})",
    }
    return steady_cli.run_method(
        args, config, workload, cost=cost, shape=cli_inputs.shape(args), settings=settings, stem=stem
    )


def _run_capacity(args: argparse.Namespace) -> int:
    """The capacity method (capacity.py): one trace (--seed), each configuration's own cost model and host tier."""
    configs = capacity.parse_configs(args.configs, POLICY_NAMES, [d.value for d in KvDtype])
    fractions = comma_list(args.capacity_fractions, float)
    bounds = comma_list(args.bounds, float)
    window = SteadyStateWindow(args.warmup_fraction, args.drain_fraction)
    trace, predictions, reached_tau = cli_inputs.workload(args, args.seed)

    def make(config: capacity.CapacityConfig):
        own = argparse.Namespace(**{**vars(args), "kv_dtype": config.kv_dtype})
        return cli_inputs.cost_model(own), cli_inputs.offload_config(own, (config.offload_mode,))

    print(
        f"{args.trace}: {len(trace)} requests (seed {args.seed}); predictions {args.prediction} (tau {reached_tau:.3f})"
    )
    unloaded, figures = capacity.run_capacity(
        trace,
        predictions,
        configs,
        make=make,
        shape=cli_inputs.shape(args),
        bound_multiples=bounds,
        fractions=fractions,
        window=window,
        seed=args.seed,
        concurrency=args.capacity_concurrency or args.max_num_seqs,
    )
    lines = capacity.table_lines(figures)
    print("\n" + "\n".join(lines))
    stem = f"sim_{args.trace}_{cli_inputs.cost_model(argparse.Namespace(**{**vars(args), 'kv_dtype': 'bf16'})).name}_capacity"
    json_path, png_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.png"
    settings = {
        "trace": args.trace,
        "num_requests": len(trace),
        "seed": args.seed,
        "engine": cli_inputs.shape(args),
        "prediction": args.prediction,
        "feedback_texts": args.feedback_texts,
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
