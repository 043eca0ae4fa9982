"""`alise bench chaos`: faults, overload, aborts, huge inputs, drain and fuzzing on the real stack.

Each phase starts the stack it needs (services/bench/chaos_stack.py), runs, and stops it:

    kills     kill -9 predictor / memory / one of two engines under load; restart pickup; then
              kill -9 of the gateway behind a real `alise up` (its restart on the same port)
    overload  capacity (saturated), then open-loop load at 1x, 4x and 20x it; a 1,000-stream burst
    deadline  short-deadline requests behind queued work: refused at once?
    aborts    N streams cancelled at random points with swaps going on; leaks in every tier
    huge      8 MB and 60 MB prompts: refusal time, gateway RSS
    drain     SIGTERM to an engine with streams in flight
    fuzz      every gRPC method, N cases per service

Prints each phase's figures as it ends and saves everything to --output (JSON), from which
`python -m services.bench.chaos_report` writes the README's reliability table.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import pathlib
import tempfile
import time

from services.bench.chaos_phases import OVERLOAD_MAX_QUEUED_WORK_S, PHASES, run_phase
from services.bench.results import build_report, write_report
from services.common import arg_types, run_info

HELP = "kill -9 of each service under load, overload, abort storm, huge inputs, drain, fuzzing"
DEFAULT_OUTPUT = pathlib.Path("docs/benchmarks/reliability/chaos.json")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chaos", help=HELP, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {','.join(PHASES)}")
    parser.add_argument("--aborts", type=int, default=10_000, help="streams in the abort storm")
    parser.add_argument("--fuzz-cases", type=int, default=10_000, help="fuzz cases per service")
    parser.add_argument("--overload-s", type=float, default=20.0, help="seconds of each open-loop overload level")
    parser.add_argument(
        "--overload-max-queued-work-s",
        type=float,
        default=OVERLOAD_MAX_QUEUED_WORK_S,
        help="the overload phase gateway's --max-queued-work-s (compare values side by side)",
    )
    parser.add_argument(
        "--overload-max-queue-wait-steps",
        type=float,
        default=1.0,
        help="the overload phase engine's --max-queue-wait-steps (0 = off)",
    )
    parser.add_argument(
        "--overload-engine-own-core",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give the overload phase's engine a CPU core of its own, the other processes the rest, as "
        "separate pods would run (needs 2 CPUs)",
    )
    parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other phases of an existing --output file (each phase records its own time and commit)",
    )
    parser.set_defaults(handler=run)


def _existing_phases(path: pathlib.Path) -> dict:
    return dict(json.loads(path.read_text())["phases"]) if path.exists() else {}


def run(args: argparse.Namespace) -> int:
    phases = list(arg_types.comma_list(args.phases, str))
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise SystemExit(f"alise bench chaos: error: unknown phases {unknown}; known: {list(PHASES)}")
    config = {
        "phases": phases,
        "aborts": args.aborts,
        "fuzz_cases": args.fuzz_cases,
        "overload_s": args.overload_s,
        "overload_max_queued_work_s": args.overload_max_queued_work_s,
        "overload_max_queue_wait_steps": args.overload_max_queue_wait_steps,
        "overload_engine_own_core": args.overload_engine_own_core,
    }
    figures: dict[str, object] = _existing_phases(args.output) if args.update else {}
    log_root = pathlib.Path(tempfile.mkdtemp(prefix="alise-chaos-"))
    print(f"logs: {log_root}", flush=True)
    for phase in phases:
        began_s, load_before = time.monotonic(), os.getloadavg()[0]
        figures[phase] = asyncio.run(run_phase(phase, args, log_root / phase))
        figures[phase]["measured"] = {
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": run_info.git_info().get("commit"),
            "config": config,
            # the machine's 1-minute load average before and after: latency tails on a shared machine need it
            "load_average_1m": [load_before, os.getloadavg()[0]],
        }
        print(f"== {phase} ({time.monotonic() - began_s:.1f} s)\n{json.dumps(figures[phase], indent=2)}", flush=True)
    path = write_report(args.output, build_report("chaos", config, {"phases": figures}))
    print(f"saved {path}")
    return 0
