"""`alise bench soak`: >= 64 streams with bursts for a long time (30 minutes by default), then
every stream replayed with the same seed and compared token for token; every KV block and host slot
free at the end, the ledger consistent, each service's RSS growth. Prints and saves JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import tempfile

from services.bench.chaos_load import LoadShape
from services.bench.chaos_stack import ENGINE_ARGS, MEMORY_ARGS, ChaosStack, ChaosStackConfig
from services.bench.results import build_report, write_report
from services.bench.soak_run import soak

HELP = "hours of streams with bursts: exact replay of every token, leaks, RSS"
DEFAULT_OUTPUT = pathlib.Path("docs/benchmarks/reliability/soak.json")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("soak", help=HELP, description=__doc__)
    parser.add_argument("--duration-s", type=float, default=1800.0, help="load phase, seconds")
    parser.add_argument("--concurrency", type=int, default=64, help="streams kept in flight")
    parser.add_argument("--burst-every-s", type=float, default=10.0)
    parser.add_argument("--burst-size", type=int, default=64, help="extra streams per burst")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="each stream's deadline")
    parser.add_argument("--num-kv-blocks", type=int, default=64, help="per engine: small, so swaps happen")
    parser.add_argument("--rss-every-s", type=float, default=10.0, help="RSS sampling period of every service")
    parser.add_argument(
        "--gateway-max-in-flight",
        type=int,
        default=192,
        help="the gateway's --max-in-flight-requests: its RSS grows ~70 KiB per stream it holds (soak_backlog.py), "
        "so a backlog behind starved engines stops here (192: the 64 streams + a burst in flight + one burst more)",
    )
    parser.add_argument(
        "--warmup-fraction", type=float, default=0.1, help="RSS growth is also reported from this mark of the run on"
    )
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    parser.set_defaults(handler=run)


async def _run(args: argparse.Namespace) -> dict:
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="alise-soak-"))
    print(f"logs: {log_dir}", flush=True)
    # Swaps lossless (--max-kv-relative-error 0, as in the soak test): with the int8/int4 codec's
    # bounded error ~1-6% of replays legitimately diverge, which would hide a real loss or reorder.
    stack = ChaosStack(
        ChaosStackConfig(
            log_dir=log_dir,
            engine_args=(*ENGINE_ARGS, "--num-kv-blocks", str(args.num_kv_blocks)),
            memory_args=(*MEMORY_ARGS, "--max-kv-relative-error", "0"),
            gateway_in_process=False,  # its own process: its RSS is sampled apart from the load generator's
            gateway_args=("--max-in-flight-requests", str(args.gateway_max_in_flight)),
            startup_timeout_s=300.0,  # a loaded shared machine (load 10-30) took over 120 s to start an engine
        )
    )
    await stack.start()
    try:
        shape = LoadShape(concurrency=args.concurrency, min_tokens=8, max_tokens=64, timeout_s=args.timeout_s)
        result = await soak(
            stack,
            duration_s=args.duration_s,
            shape=shape,
            burst_every_s=args.burst_every_s,
            burst_size=args.burst_size,
            rss_every_s=args.rss_every_s,
            warmup_fraction=args.warmup_fraction,
        )
        return result.to_json()
    finally:
        await stack.stop()


def run(args: argparse.Namespace) -> int:
    config = {key: value for key, value in vars(args).items() if key != "handler"}
    figures = asyncio.run(_run(args))
    print(json.dumps({key: value for key, value in figures.items() if key != "rss_samples"}, indent=2))
    path = write_report(args.output, build_report("soak", config, {"soak": figures}))
    print(f"saved {path}")
    return 0
