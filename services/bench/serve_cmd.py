"""`alise bench serve`: vLLM-style serving benchmark of a gateway, one or several scheduling policies.

    alise bench serve --gateway-address 127.0.0.1:50051 --rates 1 2 4        (a running stack)
    alise bench serve --start-stack --policies fcfs,alise,srpt-oracle        (one stack per policy, all up at once;
                                                                              the policies take turns at each rate)
    alise bench serve --start-stack --policies fcfs,alise --capacity-concurrency 16 --load-fractions 0.9 1
                                                  (closed-loop capacity C of the first policy first; rates 0.9 C, C)

Method (vLLM's benchmark_serving): a trace of real requests (ShareGPT / Alpaca-like, scaled down
for CPU with --length-divisor), ignore_eos with the dataset's output length as max_tokens, Poisson
(or gamma, --burstiness) arrivals, a request-rate sweep; the load comes from --client-processes
separate processes sharing one start time, and each run reports the client's send lag and CPU so a
client bottleneck is flagged ('!' in the table). Steady state (serve_steady.py): the first and last 10%
of each rate point's sends are left out of the figures, each point reports SLO attainment (TTFT and
TPOT bounds) and a stability flag, and an unstable point is not sustained. Prints a table, saves JSON (machine, commit,
config, figures) to --out and the latency-vs-rate curve next to it as PNG. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
import tempfile

import grpc

from services.bench import plots, results, serve_report
from services.bench.serve_config import RUNNING_STACK_LABEL, OutputLengths, PolicyTurns, ServeConfig
from services.bench.serve_run import run_serve
from services.bench.slo_metrics import DEFAULT_TPOT_BOUND_S
from services.bench.steady_state import DEFAULT_DRAIN_FRACTION, DEFAULT_WARMUP_FRACTION, SteadyStateWindow
from services.bench.sustainable_rate import DEFAULT_BOUND_MULTIPLES
from services.bench.workload import TRACE_NAMES
from services.common import arg_types
from services.common.cli_errors import print_error

DEFAULT_OUT = pathlib.Path("runs/bench_serve.json")
DEFAULT_RATES_PER_S = (0.5, 1.0, 2.0, 4.0)


def rate(text: str) -> float:
    """A request rate > 0; "inf" sends every request at once."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or inf, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_parser(kinds: argparse._SubParsersAction) -> None:
    """Registers `bench serve` and its flags under `alise bench`."""
    parser = kinds.add_parser("serve", help="request-rate sweep against a gateway (vLLM's method), per policy")
    target = parser.add_argument_group("target")
    target.add_argument("--gateway-address", type=arg_types.address, help="a running gateway (alise up)")
    target.add_argument("--engine-address", type=arg_types.address, help="optional: its engine, to name the policy")
    target.add_argument("--start-stack", action="store_true", help="start a local stack per policy, stop it after")
    target.add_argument("--policies", help="comma-separated engine policies (with --start-stack; default fcfs)")
    target.add_argument(
        "--engine-arg", action="append", default=[], metavar="FLAG", help="extra engine flag: --engine-arg=--x=y"
    )
    target.add_argument(
        "--policy-turns",
        choices=[turns.value for turns in PolicyTurns],
        default=PolicyTurns.SEQUENTIAL.value,
        help="sequential: the policies take turns at each rate; at-once: all policies' stacks get the same "
        "requests at the same times (the capacity probe too), so the shared machine's drift hits them alike",
    )
    target.add_argument("--no-predictor", action="store_true", help="started stacks run without the predictor")
    target.add_argument(
        "--no-memory-service", action="store_true", help="started stacks run without the memory service (recompute)"
    )
    target.add_argument("--log-dir", type=pathlib.Path, help="started stacks' logs (default: a new temp dir)")
    work = parser.add_argument_group("workload")
    work.add_argument("--trace", choices=TRACE_NAMES, default="sharegpt")
    work.add_argument("--num-requests", type=arg_types.positive_int, default=200, help="per rate point")
    work.add_argument("--seed", type=arg_types.seed, default=0)
    work.add_argument("--max-model-len", type=arg_types.positive_int, default=2048, help="trace filter, dataset tokens")
    work.add_argument("--length-divisor", type=arg_types.positive_float, default=8.0, help="lengths / this (CPU scale)")
    work.add_argument("--max-prompt-tokens", type=arg_types.positive_int, default=256, help="after division")
    work.add_argument("--max-output-tokens", type=arg_types.positive_int, default=256, help="after division")
    work.add_argument("--rates", type=rate, nargs="+", help="requests/s, ascending (default 0.5 1 2 4)")
    work.add_argument(
        "--load-fractions",
        type=arg_types.positive_float,
        nargs="+",
        help="instead of --rates: fractions of the first policy's closed-loop capacity (needs --capacity-concurrency)",
    )
    work.add_argument(
        "--capacity-concurrency",
        type=arg_types.positive_int,
        help="first probe the first policy's capacity: a closed loop holding N requests in the system",
    )
    work.add_argument("--burstiness", type=arg_types.positive_float, default=1.0, help="gamma shape; 1 = Poisson")
    judge = parser.add_argument_group("judging")
    judge.add_argument("--client-processes", type=arg_types.positive_int, default=2)
    judge.add_argument("--num-unloaded", type=arg_types.positive_int, default=10, help="sequential requests")
    multiples = list(DEFAULT_BOUND_MULTIPLES)
    judge.add_argument("--bound-multiples", type=arg_types.positive_float, nargs="+", default=multiples)
    judge.add_argument("--slo-ttft-s", type=arg_types.positive_float, help="goodput TTFT bound (default none)")
    judge.add_argument(
        "--slo-tpot-ms", type=arg_types.positive_float, default=DEFAULT_TPOT_BOUND_S * 1e3, help="SLO attainment TPOT"
    )
    judge.add_argument(
        "--warmup-fraction", type=float, default=DEFAULT_WARMUP_FRACTION, help="first sends left out of the figures"
    )
    judge.add_argument(
        "--drain-fraction", type=float, default=DEFAULT_DRAIN_FRACTION, help="last sends left out of the figures"
    )
    judge.add_argument("--slo-bound-multiple", type=arg_types.positive_float, default=4.0, help="goodput latency bound")
    judge.add_argument("--max-send-lag-ms", type=arg_types.positive_float, default=50.0, help="flag client above")
    judge.add_argument("--max-client-cpu", type=arg_types.positive_float, default=0.9, help="flag client above")
    parser.add_argument("--tokenizer", default="", help="the served model's tokenizer (default: the gateway's)")
    parser.add_argument("--model", default="", help="--model of started stacks (default: alise up's)")
    work.add_argument(
        "--output-lengths",
        choices=[mode.value for mode in OutputLengths],
        default=OutputLengths.DATASET.value,
        help="dataset: ignore_eos with the dataset's lengths (vLLM's method); model: the prompt as a chat "
        "message answered until the model's EOS, --max-output-tokens as the cap",
    )
    parser.add_argument("--timeout-s", type=arg_types.positive_float, default=1800.0, help="per request")
    parser.add_argument("--startup-timeout-s", type=arg_types.positive_float, default=300.0, help="per service")
    parser.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT, help="JSON; the PNG goes next to it")
    parser.set_defaults(handler=run)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    if args.policies:
        policies = arg_types.comma_list(args.policies, str)
    else:
        policies = ("fcfs",) if args.start_stack else (RUNNING_STACK_LABEL,)
    return ServeConfig(
        gateway_address=args.gateway_address,
        engine_address=args.engine_address,
        start_stack=args.start_stack,
        policies=policies,
        engine_args=tuple(args.engine_arg),
        with_predictor=not args.no_predictor,
        with_memory=not args.no_memory_service,
        trace=args.trace,
        num_requests=args.num_requests,
        seed=args.seed,
        max_model_len=args.max_model_len,
        length_divisor=args.length_divisor,
        max_prompt_tokens=args.max_prompt_tokens,
        max_output_tokens=args.max_output_tokens,
        rates_per_s=tuple(args.rates or (() if args.load_fractions else DEFAULT_RATES_PER_S)),
        burstiness=args.burstiness,
        num_client_processes=args.client_processes,
        num_unloaded_requests=args.num_unloaded,
        bound_multiples=tuple(args.bound_multiples),
        slo_ttft_s=args.slo_ttft_s,
        slo_bound_multiple=args.slo_bound_multiple,
        max_send_lag_s=args.max_send_lag_ms / 1e3,
        max_client_cpu_utilization=args.max_client_cpu,
        tokenizer=args.tokenizer,
        output_lengths=OutputLengths(args.output_lengths),
        model=args.model,
        timeout_s=args.timeout_s,
        startup_timeout_s=args.startup_timeout_s,
        window=SteadyStateWindow(args.warmup_fraction, args.drain_fraction),
        slo_tpot_s=args.slo_tpot_ms / 1e3,
        closed_loop_concurrency=args.capacity_concurrency,
        load_fractions=tuple(args.load_fractions or ()),
        policy_turns=PolicyTurns(args.policy_turns),
    )


def run(args: argparse.Namespace) -> int:
    """Runs `alise bench serve`; returns the exit status."""
    try:
        config = config_from_args(args)
    except ValueError as error:
        print_error("alise bench serve", str(error))
        return 2
    if config.num_requests < 2000:
        print(
            f"note: {config.num_requests} requests per rate; DESIGN.md asks >= 2,000 for sustainable-rate claims",
            file=sys.stderr,
        )
    log_dir = args.log_dir or pathlib.Path(tempfile.mkdtemp(prefix="alise-bench-serve-"))
    print(serve_report.RUN_HEADER, flush=True)
    try:
        outcome = asyncio.run(
            run_serve(config, log_dir, lambda policy, run_: print(serve_report.format_run(policy, run_), flush=True))
        )
    except grpc.aio.AioRpcError as error:
        print_error("alise bench serve", f"{error.code().name}: {error.details()}")
        return 1
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        print_error("alise bench serve", str(error))
        return 1
    sustainable = serve_report.sustainable_table(outcome, config)
    print(serve_report.format_sustainable(sustainable))
    report = results.build_report("serve", config, serve_report.figures(outcome, config, sustainable))
    results.write_report(args.out, report)
    png = plots.plot_latency_vs_rate(
        {result.policy: [run_.point() for run_ in result.runs] for result in outcome.results},
        bounds_s_per_token=outcome.bounds_s_per_token,
        title=f"alise bench serve: {config.trace}, {config.num_requests} requests/rate",
        path=args.out.with_suffix(".png"),
    )
    print(f"saved {args.out} and {png}")
    return 0
