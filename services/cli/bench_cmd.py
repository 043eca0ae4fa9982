"""`alise bench KIND`: one parent command; each benchmark module registers its own KIND.

A benchmark prints and saves figures (JSON, and a PNG where a curve says more); it asserts nothing.
Modules are imported here so that `alise bench --help` lists every kind.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers `bench` and every benchmark kind under it."""
    from services.cli import bench_stack

    bench = subparsers.add_parser("bench", help="benchmarks (stack, scheduler, simulator, serving, ...)")
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    bench_stack.add_parser(kinds)
    from services.bench import scheduler_overhead
    from services.bench.sim import cli as sim_cli

    scheduler_overhead.add_parser(kinds)
    sim_cli.add_parser(kinds)
    from services.bench import serve_cmd

    serve_cmd.add_parser(kinds)
    from services.cli import bench_replicas

    bench_replicas.add_parser(kinds)
    from services.engine.kernels import bench_attention

    bench_attention.add_parser(kinds)
