"""`alise bench sim` with the steady-state method (its default; `--method finite-sweep` is the old sweep).

    alise bench sim --trace sharegpt --preset llama3-8b-h100 --kv-cache-gb 4 --policies fcfs,alise,srpt-oracle

Per seed (--seeds, default 4) a trace sample of --num-requests (default 8,000), its predictions and
arrivals; capacities from closed-loop saturation runs; loads (--loads) as fractions of fcfs's
capacity, Poisson and gamma CV 2 arrivals (--arrivals); only arrivals between --warmup-fraction and
1 - --drain-fraction are measured. Saves <out-dir>/sim_<trace>_<preset>_steady.json and .png.
"""

from __future__ import annotations

import argparse

from services.bench.results import build_report, write_report
from services.bench.sim.capacity import DEFAULT_CAPACITY_FRACTIONS, DEFAULT_CONFIGS
from services.bench.sim.steady_report import plot_steady, table_lines
from services.bench.sim.steady_sweep import GAMMA_CV2, POISSON, SteadyConfig, run_steady
from services.bench.slo_metrics import DEFAULT_TPOT_BOUND_S, DEFAULT_TTFT_BOUND_S, SloBounds
from services.bench.steady_state import DEFAULT_DRAIN_FRACTION, DEFAULT_WARMUP_FRACTION, SteadyStateWindow
from services.common import arg_types
from services.common.arg_types import comma_list
from services.engine.scheduler.speculative_policy import (
    DEFAULT_AGING_HORIZON_S,
    DEFAULT_TTFT_LEAD_S,
    DEFAULT_TTFT_TARGET_S,
)

ARRIVALS = {"poisson": POISSON, "gamma-cv2": GAMMA_CV2}
MIN_REQUESTS, MIN_SEEDS = 8000, 4  # DESIGN.md section 3


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        choices=("steady-state", "capacity", "finite-sweep"),
        default="steady-state",
        help="steady-state (default): windowed metrics, seeds, loads of the measured capacity; "
        "capacity: steady-state capacity and sustainable rates per --configs (capacity.py); "
        "finite-sweep: the request-rate sweep over one finite trace (issue 4's figures)",
    )
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="capacity: policy:kv dtype[:offload mode], ...")
    parser.add_argument(
        "--capacity-fractions",
        default=",".join(f"{f:g}" for f in DEFAULT_CAPACITY_FRACTIONS),
        help="capacity: open-loop rates as fractions of the first configuration's capacity",
    )
    parser.add_argument("--seeds", default="0,1,2,3", help="steady-state: comma-separated seeds (>= 4 for a result)")
    parser.add_argument("--loads", default="0.8,0.9,0.95,1", help="steady-state: fractions of fcfs's capacity")
    parser.add_argument("--arrivals", default="poisson,gamma-cv2", help=f"steady-state: any of {', '.join(ARRIVALS)}")
    parser.add_argument("--ttft-slo-s", type=arg_types.positive_float, default=DEFAULT_TTFT_BOUND_S)
    parser.add_argument("--tpot-slo-ms", type=arg_types.positive_float, default=DEFAULT_TPOT_BOUND_S * 1e3)
    parser.add_argument("--warmup-fraction", type=float, default=DEFAULT_WARMUP_FRACTION)
    parser.add_argument("--drain-fraction", type=float, default=DEFAULT_DRAIN_FRACTION)
    parser.add_argument(
        "--capacity-concurrency",
        type=arg_types.positive_int,
        help="requests kept in the system by the saturation run (default: --max-num-seqs)",
    )
    parser.add_argument(
        "--base-capacity-per-s",
        type=arg_types.positive_float,
        help="steady-state: fcfs's capacity from an earlier run (skips the capacity runs; fcfs "
        "need not be among --policies)",
    )
    parser.add_argument(
        "--aging-horizon-s",
        type=arg_types.positive_float,
        default=DEFAULT_AGING_HORIZON_S,
        help="alise/srpt-oracle TTFT aging horizon, s (speculative_policy.py; inf = off)",
    )
    parser.add_argument(
        "--ttft-target-s",
        type=_seconds_or_off,
        default=DEFAULT_TTFT_TARGET_S,
        help="alise/srpt-oracle TTFT-slack promotion: a request without a first token ranks ahead from "
        "--ttft-lead-s before this TTFT target until it passes (speculative_policy.py; inf = off)",
    )
    parser.add_argument(
        "--ttft-lead-s",
        type=arg_types.positive_float,
        default=DEFAULT_TTFT_LEAD_S,
        help="TTFT-slack promotion's lead, s (capped at --ttft-target-s)",
    )
    parser.add_argument(
        "--readmit-headroom-tokens",
        type=arg_types.non_negative_int,
        default=None,
        help="a preempted request is readmitted only while this many tokens per running request stay free "
        "(scheduler.py; default: the policy's, alise/srpt-oracle 8, fcfs/mlfq 0 = vLLM's)",
    )


def _seconds_or_off(text: str) -> float:
    """A number of seconds > 0, or inf (the rule off)."""
    if text.strip().lower() in ("inf", "off"):
        return float("inf")
    return arg_types.positive_float(text)


def steady_config(args: argparse.Namespace, policies: tuple[str, ...]) -> SteadyConfig:
    """The flags as a config; ValueError on a bad value."""
    names = comma_list(args.arrivals, str)
    unknown = sorted(set(names) - set(ARRIVALS))
    if unknown or not names:
        raise ValueError(f"unknown arrivals {unknown}; known: {list(ARRIVALS)}")
    return SteadyConfig(
        policies=policies,
        load_fractions=comma_list(args.loads, float),
        burstiness_values=tuple(ARRIVALS[name] for name in names),
        seeds=comma_list(args.seeds, int),
        slo=SloBounds(args.ttft_slo_s, args.tpot_slo_ms / 1e3),
        window=SteadyStateWindow(args.warmup_fraction, args.drain_fraction),
        capacity_concurrency=args.capacity_concurrency or args.max_num_seqs,
        base_capacity_per_s=args.base_capacity_per_s,
    )


def run_method(
    args: argparse.Namespace, config: SteadyConfig, workload, *, cost, shape, settings: dict, stem: str
) -> int:
    if args.num_requests < MIN_REQUESTS or len(config.seeds) < MIN_SEEDS:
        print(
            f"note: {args.num_requests} requests x {len(config.seeds)} seeds is below the steady-state minimum "
            f"({MIN_REQUESTS} x {MIN_SEEDS}): a smoke run, not a result"
        )
    result = run_steady(workload, cost=cost, shape=shape, config=config)
    lines = table_lines(result, config)
    print("\n" + "\n".join(lines))
    json_path, png_path = args.out_dir / f"{stem}_steady.json", args.out_dir / f"{stem}_steady.png"
    report = build_report("simulator-steady-state", {**settings, "steady": config}, {"result": result, "table": lines})
    write_report(json_path, report)
    plot_steady(result, config, title=settings["title"], path=png_path)
    print(f"saved {json_path} and {png_path}")
    return 0
