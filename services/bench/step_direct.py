"""`alise bench step`'s main view: host ms per engine step, measured directly (step_host.py), for the
engine at a baseline commit and the engine of this tree, side by side in one run.

The baseline is the tree of `baseline_commit` (`git archive` into a temporary directory); each path
runs step_host.py of THIS tree in its own process with that engine package first on sys.path, so
both are measured by the same code on the same workloads. Rounds alternate the two paths (and the
order within a round) so that the load of this shared machine falls on both alike; every measured
step of every round is pooled per workload and path. Figures are thread CPU time of one
EngineCore.step() (wall time alongside: on this loaded 2-core machine wall time also holds time
spent waiting for a core).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from services.bench import step_host

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# HEAD before the in-place steady-decode pass of issue 17: the "before" of docs/benchmarks/step_overhead.json.
BASELINE_COMMIT = "8ad257853b76e0d56ed6fe97724e08837359ccb7"
METHOD = (
    "host ms = thread CPU time of one EngineCore.step() (schedule, prepare, launch, sample, update, and the "
    "engine core around them) with a decoder whose operators cost next to nothing (no layers, hidden 8, vocab "
    "32; their own time is null_operators_ms): on a GPU the model's operators run asynchronously and what "
    "blocks the next launch is this host time, so it is read off a clock instead of subtracting operator time. "
    "The attention backend's per-step prepare is the CUDA backend's (its launch plan, built on the host)."
)
DEFAULT_POLICIES = ("alise", "fcfs")  # the engine's default policy, and the one that ranks nothing
# python -c WORKER <step_host.py> <spec>: runs step_host.py as __main__ without putting its folder on sys.path.
_WORKER = "import runpy, sys; path = sys.argv[1]; sys.argv = sys.argv[1:]; runpy.run_path(path, run_name='__main__')"


@dataclass(frozen=True)
class DirectConfig:
    num_decodes: tuple[int, ...]
    policies: tuple[str, ...]
    num_steps: int  # measured steps per workload, path and round
    num_warmup_steps: int
    num_rounds: int  # alternations of baseline and current
    seed: int
    baseline_commit: str | None  # None: the current tree only


def workloads(config: DirectConfig) -> list[tuple[int, bool, str]]:
    """Every decode count with and without the chunk under the first policy; the largest decode
    count with and without the chunk under the others."""
    first, *others = config.policies
    rows = [(n, chunk, first) for n in config.num_decodes for chunk in (False, True)]
    rows += [(max(config.num_decodes), chunk, policy) for policy in others for chunk in (False, True)]
    return rows


def extract_tree(commit: str, into: pathlib.Path) -> pathlib.Path:
    """The `services` package of `commit` under `into` (ValueError if git cannot produce it)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", commit, "services"], capture_output=True
    )
    if archive.returncode != 0:
        raise ValueError(f"cannot extract commit {commit!r}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run_worker(tree: pathlib.Path, config: DirectConfig) -> dict:
    """step_host.py of this tree, run against the engine in `tree`; its JSON answer."""
    spec = {
        "workloads": workloads(config),
        "num_steps": config.num_steps,
        "num_warmup_steps": config.num_warmup_steps,
        "seed": config.seed,
    }
    command = [sys.executable, "-c", _WORKER, str(pathlib.Path(step_host.__file__)), json.dumps(spec)]
    done = subprocess.run(command, cwd=tree, env=_env(tree), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"step worker on {tree} failed:\n{done.stderr[-3000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if pathlib.Path(answer["engine_dir"]).resolve() != (tree / "services" / "engine").resolve():
        raise RuntimeError(f"the worker measured {answer['engine_dir']}, not the engine in {tree}")
    return answer


def _env(tree: pathlib.Path) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env["OMP_NUM_THREADS"] = "1"
    return env


def measure_paths(config: DirectConfig) -> dict[str, list[dict]]:
    """{path name: the worker rows of every round}: 'before' (the baseline commit) and 'after'."""
    results: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="alise-step-baseline-") as directory:
        trees = {"after": REPO_ROOT}
        if config.baseline_commit is not None:
            trees["before"] = extract_tree(config.baseline_commit, pathlib.Path(directory))
        for round_index in range(config.num_rounds):
            order = sorted(trees, reverse=round_index % 2 == 1)
            for name in order:
                results[name].append(run_worker(trees[name], config))
                print(f"  round {round_index + 1}/{config.num_rounds}: {name} measured", flush=True)
    return {name: rounds for name, rounds in results.items() if rounds}


def summarize(results: dict[str, list[dict]]) -> list[dict]:
    """Per path and workload: median (p25, p75) ms of the pooled steps, thread and wall, and per phase."""
    summary = []
    for name, rounds in results.items():
        for index, row in enumerate(rounds[0]["rows"]):
            pooled = [r["rows"][index] for r in rounds]
            thread = np.concatenate([p["step_thread_ns"] for p in pooled]) / 1e6
            wall = np.concatenate([p["step_wall_ns"] for p in pooled]) / 1e6
            phases = {
                phase: float(np.median(np.concatenate([p["phases_ns"][phase] for p in pooled]))) / 1e6
                for phase in row["phases_ns"]
            }
            summary.append(
                {
                    "path": name,
                    "num_decodes": row["num_decodes"],
                    "chunk_tokens": row["chunk_tokens"],
                    "policy": row["policy"],
                    "host_ms": float(np.median(thread)),
                    "host_ms_p25_p75": [float(np.percentile(thread, 25)), float(np.percentile(thread, 75))],
                    "wall_ms": float(np.median(wall)),
                    "phases_ms": phases,
                    "null_operators_ms": float(np.median([p["null_operators_ns"] for p in pooled])) / 1e6,
                    "num_steps": int(len(thread)),
                }
            )
    return summary


def print_table(summary: list[dict]) -> None:
    phases = list(summary[0]["phases_ms"])
    print(
        f"{'decodes':>7} {'chunk':>6} {'policy':<7} {'path':<7} {'host ms':>8} {'p25-p75':>13} {'wall':>7}"
        + "".join(f" {p:>8}" for p in phases)
        + f" {'null ops':>8}"
    )
    key = lambda row: (row["policy"] != summary[0]["policy"], row["policy"], row["num_decodes"], row["chunk_tokens"])  # noqa: E731
    for row in sorted(summary, key=key):
        low, high = row["host_ms_p25_p75"]
        print(
            f"{row['num_decodes']:>7} {row['chunk_tokens']:>6} {row['policy']:<7} {row['path']:<7}"
            f" {row['host_ms']:>8.3f} {low:>6.3f}-{high:<6.3f} {row['wall_ms']:>7.3f}"
            + "".join(f" {row['phases_ms'][p]:>8.3f}" for p in phases)
            + f" {row['null_operators_ms']:>8.3f}"
        )


def goals(summary: list[dict], policy: str) -> dict:
    """The issue's goals against the after path's figures under `policy`."""
    rows = {(r["num_decodes"], r["chunk_tokens"]): r for r in summary if r["path"] == "after" and r["policy"] == policy}
    figure = lambda key: rows[key]["host_ms"] if key in rows else None  # noqa: E731
    return {
        "policy": policy,
        "host_ms_256_decodes_plus_chunk": {"goal": 1.0, "after": figure((256, step_host.CHUNK_TOKENS))},
        "host_ms_256_decodes": {"goal": 0.3, "after": figure((256, 0))},
    }
