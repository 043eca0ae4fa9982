"""`alise bench KIND`: one parent command; each benchmark module registers its own KIND.

A benchmark prints and saves figures (JSON, and a PNG where a curve says more); it asserts nothing.
Only the module of the kind that runs is imported (services/cli/lazy_commands.py): `alise bench
--help` lists the kinds from KINDS alone.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from services.cli.lazy_commands import LazyCommand, add_commands

HELP = "benchmarks (stack, http, scheduler, sim, serve, replicas, attention)"
KINDS = {  # in --help order; each help line is the one its module registers
    "stack": LazyCommand("services.cli.bench_stack", "tokens/s at 1 and 16 streams; latency the gateway adds"),
    "scheduler": LazyCommand(
        "services.bench.scheduler_overhead", "time per scheduling step (256 running, 1,000 waiting)"
    ),
    "step": LazyCommand(
        "services.bench.step_overhead", "engine host ms per step by phase, before vs after (tiny model, CPU)"
    ),
    "spec": LazyCommand(
        "services.bench.spec_bench", "speculative decoding off/ngram/early-exit: tokens/s, TPOT, acceptance"
    ),
    "sim": LazyCommand(
        "services.bench.sim.cli", "discrete-event simulator: policies vs request rate on a GPU cost model"
    ),
    "serve": LazyCommand(
        "services.bench.serve_cmd", "request-rate sweep against a gateway (vLLM's method), per policy"
    ),
    "replicas": LazyCommand(
        "services.cli.bench_replicas", "load spread (least-work vs round-robin) and failover of engine replicas"
    ),
    "attention": LazyCommand("services.bench.attention", "paged decode kernel vs memory bandwidth and SDPA (GPU)"),
    "kv-dtype": LazyCommand(
        "services.bench.attention_kv_dtype", "int8 vs bf16 KV pool on SmolLM2: perplexity, greedy agreement (CPU)"
    ),
    "kv-codec": LazyCommand("services.bench.kv_codec", "KV swap codecs: GB/s, size, error, greedy-token agreement"),
    "kv-transfer": LazyCommand(
        "services.bench.kv_transfer", "host-tier KV transfer GB/s: shared memory vs gRPC stream"
    ),
    "http": LazyCommand("services.bench.http_overhead", "HTTP (OpenAI API) vs gRPC latency and one stream's tokens/s"),
    "chaos": LazyCommand(
        "services.bench.chaos_cmd",
        "kill -9 of each service under load, overload, abort storm, huge inputs, drain, fuzzing",
    ),
    "soak": LazyCommand(
        "services.bench.soak_cmd", "hours of streams with bursts: exact replay of every token, leaks, RSS"
    ),
}


def add_parser(subparsers: argparse._SubParsersAction, argv: Sequence[str] | None = None) -> None:
    """Registers `bench` and its kinds: in full the kind argv names (all when argv is None)."""
    bench = subparsers.add_parser("bench", help=HELP)
    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True)
    add_commands(kinds, KINDS, argv)
