"""`python -m services.cli.bench_replicas`: load spread and failover of the replica-aware gateway.

Starts two engine and two predictor replicas as processes on loopback (services.cli.replica_fleet,
what `docker compose up --scale engine=2 --scale predictor=2` gives), then:

    (1) routing: the same workload (bench_replicas_workload) through a fresh gateway per policy,
        least-work and round-robin: requests, predicted tokens and seconds, and actual output
        tokens per replica; the engines' own queue lengths sampled over time; latency figures
    (2) failover (bench_replicas_failover): time to detect a frozen, a crashed and an idle-crashed
        engine, and what happened to the streams that were on it

Prints a table and saves JSON (machine, git commit, config, figures). A benchmark: asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import pathlib
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from services.cli.bench_replicas_failover import measure_failover
from services.cli.bench_replicas_workload import (
    EngineSampler,
    WorkItem,
    balance_summary,
    latency_summary,
    load_workload,
    replay,
)
from services.cli.replica_fleet import SMALL_ENGINE_ARGS, SMALL_PREDICTOR_ARGS, FleetConfig, ReplicaFleet
from services.common import arg_types, run_info
from services.common.cli_errors import print_error
from services.gateway import app as gateway_app
from services.gateway.config import GatewayConfig

DEFAULT_DATA_DIR = run_info.REPO_ROOT.parent / "shared" / "data"
# ABBA order: slow drift of a shared machine's load hits both policies alike.
PASSES = ("least-work", "round-robin", "round-robin", "least-work")


@dataclass(frozen=True)
class BenchReplicasConfig:
    """Settings of one run (saved with the results)."""

    num_engines: int  # engine replicas (processes)
    num_predictors: int  # predictor replicas (processes); 0 = the gateway's fallback estimates
    num_requests: int  # requests per policy
    rate_per_s: float  # Poisson arrival rate, requests per second
    output_scale: float  # real response lengths are multiplied by this
    max_output_tokens: int  # and clipped to this
    max_prompt_chars: int  # prompts are truncated to this many characters
    seed: int  # workload sampling and arrival times
    data_dir: str  # where ShareGPT is read from (synthetic workload when absent)
    timeout_s: float  # gRPC deadline per request
    engine_args: tuple[str, ...] = ()  # extra flags for every engine process
    predictor_args: tuple[str, ...] = ()  # extra flags for every predictor process

    def __post_init__(self) -> None:
        if self.num_engines < 2:
            raise ValueError(f"need at least 2 engines to compare routing, got {self.num_engines}")
        if min(self.num_requests, self.max_output_tokens, self.max_prompt_chars) <= 0:
            raise ValueError("num_requests, max_output_tokens and max_prompt_chars must be > 0")
        if self.rate_per_s <= 0 or self.output_scale <= 0 or self.timeout_s <= 0:
            raise ValueError("rate_per_s, output_scale and timeout_s must be > 0")


def add_parser(kinds: argparse._SubParsersAction) -> None:
    """Registers the `replicas` kind (for `alise bench replicas`)."""
    parser = kinds.add_parser(
        "replicas", help="load spread (least-work vs round-robin) and failover of engine replicas"
    )
    _add_flags(parser)
    parser.set_defaults(handler=run)


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-engines", type=arg_types.positive_int, default=2)
    parser.add_argument("--num-predictors", type=arg_types.non_negative_int, default=2)
    parser.add_argument("--num-requests", type=arg_types.positive_int, default=60)
    parser.add_argument("--rate-per-s", type=arg_types.positive_float, default=3.0)
    parser.add_argument("--output-scale", type=arg_types.positive_float, default=0.25)
    parser.add_argument("--max-output-tokens", type=arg_types.positive_int, default=200)
    parser.add_argument("--max-prompt-chars", type=arg_types.positive_int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=pathlib.Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--timeout-s", type=arg_types.positive_float, default=300.0)
    parser.add_argument("--skip-failover", action="store_true", help="only the routing comparison")
    for service in ("engine", "predictor"):
        parser.add_argument(
            f"--{service}-arg",
            action="append",
            default=[],
            metavar="FLAG",
            help=f"extra flag for every {service} (repeatable; --{service}-arg=--flag=value)",
        )
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/bench_replicas.json"))


def config_from_args(args: argparse.Namespace) -> BenchReplicasConfig:
    return BenchReplicasConfig(
        num_engines=args.num_engines,
        num_predictors=args.num_predictors,
        num_requests=args.num_requests,
        rate_per_s=args.rate_per_s,
        output_scale=args.output_scale,
        max_output_tokens=args.max_output_tokens,
        max_prompt_chars=args.max_prompt_chars,
        seed=args.seed,
        data_dir=str(args.data_dir),
        timeout_s=args.timeout_s,
        engine_args=tuple(args.engine_arg),
        predictor_args=tuple(args.predictor_arg),
    )


async def _gateway(fleet: ReplicaFleet, policy: str) -> gateway_app.GatewayHandle:
    handle = await gateway_app.start(
        GatewayConfig(
            engine_address=",".join(fleet.engine_addresses),
            predictor_address=",".join(fleet.predictor_addresses),
            engine_routing=policy,
            port=0,
            log_level="WARNING",
        )
    )
    while not all(r.state == "serving" for r in handle.peers.engines.reports()):
        await asyncio.sleep(0.05)
    return handle


async def run_policy(fleet: ReplicaFleet, policy: str, workload: list[WorkItem], timeout_s: float) -> dict[str, Any]:
    """One pass of the workload through a fresh gateway routing with `policy`."""
    handle = await _gateway(fleet, policy)
    sampler = EngineSampler(fleet.engine_addresses)
    before = await sampler.generated_tokens()
    sampler.start()
    try:
        records = await replay(handle.address, workload, timeout_s)
    finally:
        await sampler.close()
    after = await EngineSampler(fleet.engine_addresses).generated_tokens()
    replicas = {
        r.address: {
            "num_requests": r.counters.num_routed,
            "predicted_tokens": round(r.counters.routed_predicted_tokens, 1),
            "predicted_work_s": round(r.counters.routed_predicted_work_s, 3),
            "num_routed_before_any_rate": r.counters.num_routed_without_rate,
            "output_tokens": r.counters.num_output_tokens,
            "engine_generated_tokens": after[r.address] - before[r.address],
            "num_failed": r.counters.num_failed,
        }
        for r in handle.peers.engines.reports()
    }
    predictor_calls = [asdict(r) for r in handle.peers.predictors.reports()] if handle.peers.predictors else []
    await handle.stop(0)
    return {
        "policy": policy,
        "replicas": replicas,
        "balance": balance_summary(sampler.samples),
        "latency": latency_summary(records),
        "predictor_replicas": predictor_calls,
    }


async def run_benchmark(config: BenchReplicasConfig, *, skip_failover: bool) -> dict[str, Any]:
    workload, source = load_workload(
        pathlib.Path(config.data_dir),
        num_requests=config.num_requests,
        rate_per_s=config.rate_per_s,
        seed=config.seed,
        output_scale=config.output_scale,
        max_output_tokens=config.max_output_tokens,
        max_prompt_chars=config.max_prompt_chars,
    )
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="alise-bench-replicas-"))
    fleet = ReplicaFleet(
        FleetConfig(
            config.num_engines,
            config.num_predictors,
            log_dir,
            log_level="ERROR",
            engine_args=SMALL_ENGINE_ARGS + config.engine_args,
            predictor_args=SMALL_PREDICTOR_ARGS + config.predictor_args,
        )
    )
    started_s = time.monotonic()
    await fleet.start()
    fleet_start_s = time.monotonic() - started_s
    try:
        routing = [await run_policy(fleet, policy, workload, config.timeout_s) for policy in PASSES]
        failover = None
        if not skip_failover:
            handle = await _gateway(fleet, "least-work")
            failover = {"gateway_health_settings": _health_settings(), **await measure_failover(handle, fleet)}
            await handle.stop(0)
    finally:
        await fleet.stop()
    return {
        "benchmark": "replicas",
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": run_info.machine_info(),
        "git": run_info.git_info(),
        "config": asdict(config),
        "workload": {
            "source": source,
            "num_requests": len(workload),
            "total_output_tokens": sum(i.max_tokens for i in workload),
            "duration_s": workload[-1].arrival_s,
        },
        "fleet_start_s": round(fleet_start_s, 2),
        "routing_summary": {
            policy: policy_summary([r for r in routing if r["policy"] == policy]) for policy in dict.fromkeys(PASSES)
        },
        "routing": routing,
        "failover": failover,
    }


def policy_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One policy's passes together: per-replica totals, and balance and latency averaged over passes."""
    totals: dict[str, dict[str, float]] = {}
    for run in runs:
        for address, row in run["replicas"].items():
            total = totals.setdefault(address, {})
            for key in ("num_requests", "predicted_tokens", "predicted_work_s", "output_tokens"):
                total[key] = round(total.get(key, 0) + row[key], 3)
    outputs = [row["output_tokens"] for row in totals.values()]

    def mean_of(section: str, key: str) -> float | None:
        values = [run[section][key] for run in runs if run[section][key] is not None]
        return round(sum(values) / len(values), 4) if values else None

    return {
        "num_passes": len(runs),
        "replicas": totals,
        "output_tokens_max_over_mean": round(max(outputs) / (sum(outputs) / len(outputs)), 4) if sum(outputs) else None,
        "mean_queue_gap_requests": mean_of("balance", "mean_queue_gap_requests"),
        "mean_outstanding_gap_tokens": mean_of("balance", "mean_outstanding_gap_tokens"),
        "mean_normalized_latency_s_per_token": mean_of("latency", "mean_normalized_latency_s_per_token"),
        "mean_e2e_s": mean_of("latency", "mean_e2e_s"),
        "p99_e2e_s": mean_of("latency", "p99_e2e_s"),
        "num_failed": sum(run["latency"]["num_failed"] for run in runs),
    }


def _health_settings() -> dict[str, Any]:
    defaults = GatewayConfig(engine_address="127.0.0.1:1")
    return {
        "interval_s": defaults.health_check_interval_s,
        "timeout_s": defaults.health_check_timeout_s,
        "max_failures": defaults.max_health_failures,
    }


def format_report(report: dict[str, Any]) -> str:
    """The routing table and the failover lines."""
    lines = [
        f"workload: {report['workload']}",
        "",
        f"{'policy':<12} {'replica':<18} {'requests':>8} {'pred tok':>9} {'pred s':>8} "
        f"{'out tok':>8} {'mean queue':>10}",
    ]
    for run in report["routing"]:
        balance = run["balance"]["per_replica"]
        for address, row in run["replicas"].items():
            lines.append(
                f"{run['policy']:<12} {address:<18} {row['num_requests']:>8} {row['predicted_tokens']:>9.0f} "
                f"{row['predicted_work_s']:>8.2f} {row['output_tokens']:>8} "
                f"{balance[address]['mean_queued_requests']:>10.2f}"
            )
        latency = run["latency"]
        lines.append(
            f"{'':<12} queue gap {run['balance']['mean_queue_gap_requests']:.2f} req, "
            f"outstanding gap {run['balance']['mean_outstanding_gap_tokens']:.0f} tok; "
            f"e2e mean {latency['mean_e2e_s']:.2f} s p99 {latency['p99_e2e_s']:.2f} s; "
            f"norm {latency['mean_normalized_latency_s_per_token'] * 1000:.1f} ms/tok; "
            f"failed {latency['num_failed']}"
        )
    lines.append("")
    for policy, summary in report["routing_summary"].items():
        lines.append(
            f"{policy:<12} over {summary['num_passes']} passes: out-token max/mean "
            f"{summary['output_tokens_max_over_mean']}, queue gap {summary['mean_queue_gap_requests']}, "
            f"outstanding gap {summary['mean_outstanding_gap_tokens']} tok, norm latency "
            f"{summary['mean_normalized_latency_s_per_token']} s/tok, p99 e2e {summary['p99_e2e_s']} s"
        )
    if report["failover"]:
        for name in ("frozen", "crash", "idle_crash"):
            lines.append(f"failover {name}: {json.dumps(report['failover'][name])}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except ValueError as error:
        print_error("alise bench replicas", str(error))
        return 2
    report = asyncio.run(run_benchmark(config, skip_failover=args.skip_failover))
    print(format_report(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"saved {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.cli.bench_replicas", description=__doc__)
    _add_flags(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
