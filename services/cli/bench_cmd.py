"""`alise bench KIND`: one parent command; each benchmark module registers its own KIND.

A benchmark prints and saves figures (JSON, and a PNG where a curve says more); it asserts nothing.
Modules are imported when the parser is built (not at import of the CLI), so `alise up` stays light.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers `bench` and every benchmark kind under it."""
    from services.bench import http_overhead, scheduler_overhead, serve_cmd
    from services.bench.sim import cli as sim_cli
    from services.cli import bench_replicas, bench_stack
    from services.engine.kernels import bench_attention
    from services.engine.kv_offload import bench_kv_codec
    from services.memory import bench_transfer

    bench = subparsers.add_parser("bench", help="benchmarks (stack, http, scheduler, sim, serve, replicas, attention)")
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    for module in (bench_stack, scheduler_overhead, sim_cli, serve_cmd, bench_replicas, bench_attention, bench_kv_codec,
                   bench_transfer, http_overhead):
        module.add_parser(kinds)
