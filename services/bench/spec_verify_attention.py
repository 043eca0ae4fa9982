"""Micro-benchmark: the reference attention call for steps with verifies, per-request SDPA vs batched.

`python -m services.bench.spec_verify_attention --out docs/benchmarks/spec/verify_attention.json`

One layer's attention call (ReferenceAttention.attend) on SmolLM2's shape (9 query heads, 3 KV heads, head
dim 64, bf16, block size 16, 1 torch thread) over a paged cache with shuffled blocks. Three paths on the same tensors,
alternated call by call, timed on thread CPU time (other jobs on the cores are left out), median per call:

    baseline     attention.py as of --baseline-commit, loaded from git (session 10: decodes gathered by advanced
                 indexing, masked_fill of a repeated mask; each verify one fp32 SDPA of its own)
    per-request  this tree, metadata prepared without short_queries (decodes batched, each verify one SDPA)
    batched      this tree, the backend's own prepare (verifies batched: short_query_attention.py)

Also the max abs difference of each output from the batched one (bf16 rounding).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from types import ModuleType

import torch

from services.bench.attention_steps import random_attention_step
from services.bench.results import build_report, write_report
from services.engine.kernels.backend import ReferenceAttention

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE = 9, 3, 64, 16
# case name -> (query tokens, context tokens) per request
CASES = {
    "16 decodes, ctx 800 (no verify)": [(1, 800)] * 16,
    "16 verifies x 9 queries, ctx 800": [(9, 800)] * 16,
    "16 verifies x 17 queries, ctx 800": [(17, 800)] * 16,
    "12 decodes + 4 verifies x 9, ctx 800": [(1, 800)] * 12 + [(9, 800)] * 4,
    "16 verifies, k+1 2..17, ctx 300-1000": [(2 + (i * 5) % 16, 300 + 45 * i) for i in range(16)],
    "1 verify x 5 queries, ctx 800": [(5, 800)],
    "1 verify x 17 queries, ctx 800": [(17, 800)],
}


@dataclasses.dataclass(frozen=True)
class CaseResult:
    case: str  # which step
    baseline_ms: float | None  # median thread-CPU ms per attention call with --baseline-commit's attention.py
    per_request_ms: float  # the same, this tree, verifies one SDPA each
    batched_ms: float  # the same, this tree, verifies batched (short_query_attention.py)
    speedup_vs_baseline: float | None  # baseline_ms / batched_ms
    speedup_vs_per_request: float  # per_request_ms / batched_ms
    max_abs_difference: float  # largest difference of the other paths' outputs from batched (bf16 rounding)


def _step(requests: list[tuple[int, int]], seed: int = 0):
    return random_attention_step(
        requests,
        num_heads=NUM_HEADS,
        num_kv_heads=NUM_KV_HEADS,
        head_dim=HEAD_DIM,
        block_size=BLOCK_SIZE,
        dtype=torch.bfloat16,
        seed=seed,
    )


def load_baseline(commit: str) -> ModuleType:
    """services/engine/attention.py as of commit, as a module of its own (it imports only torch there)."""
    source = subprocess.run(
        ["git", "show", f"{commit}:services/engine/attention.py"], check=True, capture_output=True, text=True
    ).stdout
    path = pathlib.Path(tempfile.mkdtemp()) / "baseline_attention.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_attention", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _paths(metadata, cache, baseline: ModuleType | None) -> dict:
    """label -> attend(query) for each path, over layer 0 of cache."""
    backend = ReferenceAttention()
    batched = backend.prepare(metadata)
    per_request = dataclasses.replace(batched, short_queries=None)
    paths = {
        "per_request": lambda query: backend.attend(query, cache, 0, per_request, HEAD_DIM**-0.5),
        "batched": lambda query: backend.attend(query, cache, 0, batched, HEAD_DIM**-0.5),
    }
    if baseline is not None:
        old = dataclasses.replace(metadata, decode_batch=baseline.decode_batch_of(metadata))
        keys, values = cache.key_cache[0], cache.value_cache[0]
        paths["baseline"] = lambda query: baseline.attend_mixed(
            query, keys, values, old, HEAD_DIM**-0.5, baseline.decode_attention_reference
        )
    return paths


def measure_case(name: str, requests: list[tuple[int, int]], num_calls: int, baseline: ModuleType | None):
    query, cache, metadata = _step(requests)
    paths = _paths(metadata, cache, baseline)
    times: dict[str, list[float]] = {label: [] for label in paths}
    outputs = {}
    for call in range(num_calls + 1):  # the first call of each warms up
        labels = list(paths)
        for label in labels[call % len(labels) :] + labels[: call % len(labels)]:  # rotated per call
            started_s = time.thread_time()
            outputs[label] = paths[label](query)
            if call:
                times[label].append(time.thread_time() - started_s)
    median_ms = {label: 1e3 * statistics.median(values) for label, values in times.items()}
    difference = max((outputs[label].float() - outputs["batched"].float()).abs().max().item() for label in paths)
    baseline_ms = median_ms.get("baseline")
    return CaseResult(
        name,
        baseline_ms,
        median_ms["per_request"],
        median_ms["batched"],
        None if baseline_ms is None else baseline_ms / median_ms["batched"],
        median_ms["per_request"] / median_ms["batched"],
        difference,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-calls", type=int, default=30, help="timed calls per path and case")
    parser.add_argument("--baseline-commit", default=None, help="also time attention.py as of this commit")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/benchmarks/spec/verify_attention.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    baseline = None if args.baseline_commit is None else load_baseline(args.baseline_commit)
    load_before = os.getloadavg()
    results = []
    for name, requests in CASES.items():
        result = measure_case(name, requests, args.num_calls, baseline)
        results.append(result)
        old = "" if result.baseline_ms is None else f"baseline {result.baseline_ms:6.2f} ms  "
        print(
            f"{name:38s} {old}per-request {result.per_request_ms:6.2f} ms  batched {result.batched_ms:6.2f} ms"
            f"  x{result.speedup_vs_baseline or 0:.2f} / x{result.speedup_vs_per_request:.2f}"
            f"  max |diff| {result.max_abs_difference:.3g}"
        )
    config = {
        "num_calls": args.num_calls,
        "baseline_commit": args.baseline_commit,
        "shape": {"num_heads": NUM_HEADS, "num_kv_heads": NUM_KV_HEADS, "head_dim": HEAD_DIM},
        "block_size": BLOCK_SIZE,
        "dtype": "bfloat16",
        "torch_threads": 1,
        "clock": "thread_time",
    }
    figures = {"load_average_before": load_before, "load_average_after": os.getloadavg(), "cases": results}
    print("wrote", write_report(args.out, build_report("spec_verify_attention", config, figures)))


if __name__ == "__main__":
    main()
