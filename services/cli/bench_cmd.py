"""`alise bench KIND`: one parent command; each benchmark module registers its own KIND.

A benchmark prints and saves figures (JSON, and a PNG where a curve says more); it asserts nothing.
Modules are imported when the parser is built (not at import of the CLI), so `alise up` stays light.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers `bench` and every benchmark kind under it."""
    from services.bench import attention, http_overhead, kv_codec, kv_transfer, scheduler_overhead, serve_cmd
    from services.bench.sim import cli as sim_cli
    from services.cli import bench_replicas, bench_stack

    bench = subparsers.add_parser("bench", help="benchmarks (stack, http, scheduler, sim, serve, replicas, attention)")
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    for module in (bench_stack, scheduler_overhead, sim_cli, serve_cmd, bench_replicas, attention, kv_codec,
                   kv_transfer, http_overhead):
        module.add_parser(kinds)
