"""Issue 19's simulator goals read off saved steady-state reports, seed by seed.

    python -m services.bench.sim.steady_goals BASE.json [BASE2.json ...] [--alise LABEL=OTHER.json ...] [--out goals.md]

Each BASE holds fcfs, alise and srpt-oracle runs (`alise bench sim` steady-state JSON; several BASEs
add seeds, e.g. a run of --seeds 4,5,6,7 with --base-capacity-per-s = the first's fcfs capacity);
each --alise report holds alise runs with other predictions on the same traces and arrivals (same
seeds, --loads in the same order, --arrivals and --base-capacity-per-s; checked: the rates and the
arrivals' seeds must match, and no seed may come twice). --oracle reports replace the BASEs'
srpt-oracle runs (the oracle under another rule, same arrivals; checked likewise). A load's figures
use the seeds its reports hold (the `seeds` column). Every goal is tested as a paired per-seed
difference with its 95% Student-t interval (steady_state.mean_ci), so the interval answers "is the
goal met" rather than two wide per-policy intervals overlapping:

- SLO misses: alise's share of requests missing the SLO minus 1.1x the oracle's (goal: <= 0);
- p99 normalized latency: alise's gain over fcfs minus 0.9x the oracle's gain (goal: >= 0);
- p99 TTFT: alise's minus fcfs's (goal: <= 0).
Ratios (alise/oracle misses, share of the oracle's gain, alise/fcfs TTFT) are of the seed means.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections import defaultdict

from services.bench.sim.steady_sweep import arrival_seed
from services.bench.steady_state import Estimate, mean_ci

ORACLE = "srpt-oracle"
MISS_FACTOR, GAIN_SHARE = 1.1, 0.9  # issue 19's goals
Runs = dict[tuple[str, float, str], dict[int, dict]]  # (policy label, burstiness, load) -> seed -> run


def label_of(burstiness: float) -> str:
    return "Poisson" if burstiness == 1.0 else f"gamma CV {burstiness**-0.5:g}"


def read_runs(path: pathlib.Path, *, policy_label: dict[str, str] | None = None) -> Runs:
    """The report's per-seed runs keyed by (label, burstiness, load as text); labels default to policy names.
    Each run gets its arrivals' seed ("arrival_seed", from the load's place in the report's --loads) when the
    report names its loads."""
    report = json.loads(path.read_text())
    loads = report.get("config", {}).get("steady", {}).get("load_fractions")
    runs: Runs = defaultdict(dict)
    for run in report["result"]["runs"]:
        label = (policy_label or {}).get(run["policy"], run["policy"])
        if loads is not None:
            run = {**run, "arrival_seed": arrival_seed(run["seed"], loads.index(run["load_fraction"]))}
        runs[(label, run["burstiness"], f"{run['load_fraction']:g}")][run["seed"]] = run
    return runs


def merge(base: Runs, extra: Runs) -> Runs:
    """base plus extra's runs (seeds of a key united); ValueError when extra repeats a seed of base, or when a
    run's rate differs from base's at the same seed and load (other arrivals)."""
    given = {(b, load, seed): run for (_, b, load), seeds in base.items() for seed, run in seeds.items()}
    merged: Runs = defaultdict(dict, {key: dict(seeds) for key, seeds in base.items()})
    for (label, burstiness, load), seeds in extra.items():
        for seed, run in seeds.items():
            other = given.get((burstiness, load, seed))
            expected = None if other is None else other["rate_per_s"]
            if expected is not None and abs(expected - run["rate_per_s"]) > 1e-9 * expected:
                raise ValueError(f"{label} {load} seed {seed}: rate {run['rate_per_s']} is not the base's {expected}")
            seeds_of = (None, None) if other is None else (other.get("arrival_seed"), run.get("arrival_seed"))
            if None not in seeds_of and seeds_of[0] != seeds_of[1]:  # reports that name their loads
                raise ValueError(
                    f"{label} {load} seed {seed}: arrival seed {run['arrival_seed']} is not the base's "
                    f"{other['arrival_seed']} (the load's place in --loads differs: other arrivals at the same rate)"
                )
            if seed in merged[(label, burstiness, load)]:
                raise ValueError(f"{label} {load} seed {seed} is in two reports")
            merged[(label, burstiness, load)][seed] = run
    return merged


def _miss(run: dict) -> float:
    return 100.0 * (1.0 - run["metrics"]["slo_attainment"])


def _metric(name: str):
    return lambda run: run["metrics"][name]


def paired(runs: Runs, first: tuple, second: tuple, value, weight: float = 1.0) -> Estimate:
    """mean_ci over seeds of value(first's run) - weight * value(second's run)."""
    seeds = sorted(set(runs[first]) & set(runs[second]))
    return mean_ci([value(runs[first][s]) - weight * value(runs[second][s]) for s in seeds])


def seed_mean(runs: Runs, key: tuple, value) -> float:
    return mean_ci([value(run) for run in runs[key].values()]).mean


def _text(estimate: Estimate, digits: int = 2) -> str:
    return f"{estimate.mean:+.{digits}f} [{estimate.low:+.{digits}f}, {estimate.high:+.{digits}f}]"


def _ratio(top: float, bottom: float) -> str:
    return f"{top / bottom:.2f}x" if bottom > 0 else "-"


def gain_vs_goal(runs: Runs, fcfs: tuple, alise: tuple, oracle: tuple, name: str) -> Estimate:
    """mean_ci over seeds of (fcfs - alise) - GAIN_SHARE * (fcfs - oracle) on metric `name`."""
    value = _metric(name)
    seeds = sorted(set(runs[fcfs]) & set(runs[alise]) & set(runs[oracle]))
    return mean_ci(
        [
            (value(runs[fcfs][s]) - value(runs[alise][s]))
            - GAIN_SHARE * (value(runs[fcfs][s]) - value(runs[oracle][s]))
            for s in seeds
        ]
    )


def goal_rows(runs: Runs, label: str, burstiness: float, load: str) -> list[str]:
    """Markdown cells for one alise variant at one load: misses, p99 normalized, p99 TTFT vs the goals."""
    fcfs, alise, oracle = (("fcfs", burstiness, load), (label, burstiness, load), (ORACLE, burstiness, load))
    p99n, ttft = _metric("p99_normalized_latency_s_per_token"), _metric("p99_ttft_s")
    misses = [seed_mean(runs, key, _miss) for key in (fcfs, alise, oracle)]
    gains = [seed_mean(runs, fcfs, p99n) - seed_mean(runs, key, p99n) for key in (alise, oracle)]
    margin = gain_vs_goal(runs, fcfs, alise, oracle, "p99_normalized_latency_s_per_token")
    ttft_means = [seed_mean(runs, key, ttft) for key in (fcfs, alise)]
    return [
        label_of(burstiness),
        f"{float(load):.0%}",
        str(len(runs[alise])),
        label,
        " / ".join(f"{m:.2f}" for m in misses),
        _ratio(misses[1], misses[2]),
        _text(paired(runs, alise, oracle, _miss, MISS_FACTOR)),
        f"{gains[0] / gains[1]:.0%}" if gains[1] > 0 else "-",
        _text(Estimate(margin.mean * 1e3, margin.half_width * 1e3, margin.num_samples), 1),
        " / ".join(f"{m:.2f}" for m in ttft_means),
        _text(paired(runs, alise, fcfs, ttft)),
    ]


HEADER = (
    "| arrivals | load | seeds | alise predictions | missing SLO %, fcfs / alise / oracle | alise / oracle misses "
    "| alise - 1.1x oracle misses, points (goal <= 0) | share of oracle's p99 normalized gain "
    "| alise gain - 0.9x oracle gain, ms/token (goal >= 0) | p99 TTFT s, fcfs / alise | alise - fcfs p99 TTFT, s "
    "(goal <= 0) |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def goal_table(runs: Runs, labels: list[str]) -> str:
    keys = sorted({(b, load) for (policy, b, load) in runs if policy == "fcfs"}, key=lambda k: (-k[0], float(k[1])))
    lines = [HEADER]
    for burstiness, load in keys:
        present = [label for label in labels if runs.get((label, burstiness, load))]
        lines += ["| " + " | ".join(goal_rows(runs, label, burstiness, load)) + " |" for label in present]
    return "\n".join(lines)


def _replace_oracle(runs: Runs, paths: list[pathlib.Path]) -> Runs:
    """runs without their srpt-oracle runs, plus the srpt-oracle runs of `paths` (other policies there ignored)."""
    kept: Runs = defaultdict(dict, {key: seeds for key, seeds in runs.items() if key[0] != ORACLE})
    for path in paths:
        oracle = {key: seeds for key, seeds in read_runs(path).items() if key[0] == ORACLE}
        kept = merge(kept, defaultdict(dict, oracle))
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=pathlib.Path, nargs="+", help="steady-state JSONs with fcfs, alise, srpt-oracle")
    parser.add_argument("--base-label", default="alise", help="what alise's predictions in BASE are called")
    parser.add_argument(
        "--alise",
        action="append",
        default=[],
        help="LABEL=JSON of alise runs with other predictions (a LABEL again adds seeds; other policies there ignored)",
    )
    parser.add_argument(
        "--oracle",
        type=pathlib.Path,
        action="append",
        default=[],
        help="JSON of srpt-oracle runs that replace the BASEs' (repeatable: more seeds)",
    )
    parser.add_argument("--out", type=pathlib.Path, help="also write the table here")
    args = parser.parse_args(argv)
    runs = read_runs(args.base[0], policy_label={"alise": args.base_label})
    for path in args.base[1:]:
        runs = merge(runs, read_runs(path, policy_label={"alise": args.base_label}))
    if args.oracle:
        runs = _replace_oracle(runs, args.oracle)
    labels = [args.base_label]
    for item in args.alise:
        label, _, path = item.partition("=")
        other = read_runs(pathlib.Path(path), policy_label={"alise": label})
        runs = merge(runs, defaultdict(dict, {key: seeds for key, seeds in other.items() if key[0] == label}))
        labels += [] if label in labels else [label]  # a label twice: more seeds of the same predictions
    table = goal_table(runs, labels)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
