"""`alise bench sim`: the discrete-event simulator's policy comparison (JSON + PNG).

    alise bench sim --trace sharegpt --preset llama3-8b-h100 --kv-cache-gb 8
    alise bench sim --trace alpaca --preset llama3-8b-h100 --prediction noisy-oracle --tau 0.6

Prints one line per (rate, policy) and a table of sustainable rates per latency bound; saves
<out-dir>/sim_<trace>_<preset>.json and .png (normalized latency vs rate, one line per policy).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib

from services.bench.plots import plot_latency_vs_rate
from services.bench.results import build_report, write_report
from services.bench.sim.gpu_presets import GB, PRESETS, LinearCostModel
from services.bench.sim.predictions import constant_distributions, noisy_oracle_distributions
from services.bench.sim.simulator import EngineShape
from services.bench.sim.sweep import SweepConfig, SweepResult, run_sweep
from services.bench.workload import TRACE_NAMES, load_trace
from services.cli import arg_types
from services.engine.scheduler import POLICY_NAMES, StepCostCoefficients

PREDICTION_MODES = ("noisy-oracle", "none")


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("sim", help="discrete-event simulator: policies vs request rate on a GPU cost model")
    parser.add_argument("--trace", choices=TRACE_NAMES, default="sharegpt")
    parser.add_argument("--num-requests", type=arg_types.positive_int, default=2000)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama3-8b-h100")
    parser.add_argument("--kv-cache-gb", type=arg_types.positive_float, help="KV pool size (default: what the card holds)")
    parser.add_argument(
        "--cost-coefficients", help="base_s,per_token_s,per_kv_token_s fitted on measured steps (replaces the roofline)"
    )
    parser.add_argument("--policies", default="fcfs,alise,srpt-oracle,mlfq", help="comma-separated")
    parser.add_argument("--rates", default="", help="comma-separated req/s (default: fractions of the capacity)")
    parser.add_argument("--burstiness", type=arg_types.positive_float, default=1.0, help="gamma shape; 1 = Poisson")
    parser.add_argument("--prediction", choices=PREDICTION_MODES, default="noisy-oracle")
    parser.add_argument("--tau", type=float, default=0.6, help="Kendall's tau of the noisy oracle")
    parser.add_argument("--bounds", default="2,4,8", help="latency bounds, multiples of the unloaded mean")
    parser.add_argument("--slo-multiple", type=arg_types.positive_float, default=4.0, help="goodput SLO multiple")
    parser.add_argument("--max-num-seqs", type=arg_types.positive_int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=arg_types.positive_int, default=2048)
    parser.add_argument("--max-model-len", type=arg_types.positive_int, default=4096)
    parser.add_argument("--max-wait-s", type=arg_types.positive_float, default=60.0)
    parser.add_argument("--seed", type=arg_types.seed, default=0)
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("runs"))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        policies = _names(args.policies, POLICY_NAMES)
        cost = _cost_model(args)
        rates = tuple(float(x) for x in args.rates.split(",") if x)
        bounds = tuple(float(x) for x in args.bounds.split(",") if x)
        trace = load_trace(args.trace, num_requests=args.num_requests, seed=args.seed, max_model_len=args.max_model_len)
    except (ValueError, FileNotFoundError) as error:
        print(f"alise bench sim: error: {error}")
        return 2
    predictions, reached_tau = _predictions(args, trace)
    shape = EngineShape(args.max_num_seqs, args.max_num_batched_tokens, args.max_model_len, args.max_wait_s)
    config = SweepConfig(policies, rates, args.burstiness, bounds, args.slo_multiple, args.seed)
    print(f"{args.trace}: {len(trace)} requests; {cost.name}: {cost.num_kv_blocks} KV blocks of 16 tokens; "
          f"predictions {args.prediction} (tau {reached_tau:.3f})")
    result = run_sweep(trace, predictions, cost=cost, shape=shape, config=config)
    _print_bounds(result)
    stem = args.out_dir / f"sim_{args.trace}_{cost.name}"
    settings = {
        "trace": args.trace, "num_requests": len(trace), "cost_model": dataclasses.asdict(cost), "engine": shape,
        "sweep": config, "prediction": args.prediction, "target_tau": args.tau, "reached_tau": reached_tau,
    }
    write_report(stem.with_suffix(".json"), build_report("simulator", settings, {"result": result}))
    curves = {p: [pt.rate_point() for pt in result.points if pt.policy == p] for p in policies}
    plot_latency_vs_rate(
        curves, bounds_s_per_token=[b.bound_s_per_token for b in result.bounds],
        title=f"{args.trace} on {cost.name} (tau {reached_tau:.2f})", path=stem.with_suffix(".png"),
    )
    print(f"saved {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return 0


def _names(text: str, known) -> tuple[str, ...]:
    names = tuple(name for name in text.split(",") if name)
    unknown = sorted(set(names) - set(known))
    if unknown or not names:
        raise ValueError(f"unknown policies {unknown}; known: {list(known)}")
    return names


def _cost_model(args):
    preset = PRESETS[args.preset]
    if args.kv_cache_gb:
        preset = dataclasses.replace(preset, name=f"{preset.name}-kv{args.kv_cache_gb:g}gb", kv_cache_bytes_override=args.kv_cache_gb * GB)
    if not args.cost_coefficients:
        return preset
    base, per_token, per_kv = (float(x) for x in args.cost_coefficients.split(","))
    return LinearCostModel(f"{preset.name}-fitted", StepCostCoefficients(base, per_token, per_kv), preset.num_kv_blocks)


def _predictions(args, trace):
    if args.prediction == "none":
        mean = sum(t.num_output_tokens for t in trace) / len(trace)
        return constant_distributions(len(trace), mean), 0.0
    return noisy_oracle_distributions([t.num_output_tokens for t in trace], target_tau=args.tau, seed=args.seed)


def _print_bounds(result: SweepResult) -> None:
    print(f"\nsustainable request rate (req/s) under mean normalized latency <= multiple x unloaded "
          f"({result.unloaded_mean_s_per_token * 1e3:.2f} ms/token)")
    for bound in result.bounds:
        rates = "  ".join(f"{p} {r:.3f} (x{bound.ratio_to_fcfs[p]:.2f})" for p, r in bound.sustainable_rate_per_s.items())
        recovered = "" if bound.oracle_gain_recovered is None else f"  alise recovers {bound.oracle_gain_recovered:.0%} of oracle gain"
        print(f"  {bound.multiple:g}x: {rates}{recovered}")
