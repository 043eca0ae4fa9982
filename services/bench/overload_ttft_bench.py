"""Where admitted requests' TTFT goes at 20x capacity vs 1x, per request, from the engine's step trace.

    python -m services.bench.overload_ttft_bench [--rounds 2] [--duration-s 20] [--output FILE]

One engine (recording every step: overload_step_trace) behind one gateway per variant (each a
process with its own admission flags; only one is used at a time, since each counts only its own
requests). Capacity is measured once (closed loop, 16 streams), then each round runs 1x and 20x
open-loop arrivals through each variant, the order alternating between rounds. Every admitted
request's TTFT is split into the way in (client -> gateway -> engine), the engine queue (with the
steps it waited and where in a step it arrived), its first step (duration, batch, tokens, the
cohort of other new requests in it) and the way out (overload_ttft_split). The CPU each process used
and the load average are recorded per level.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import tempfile
import time

from services.bench.chaos_contention import ContentionProbe
from services.bench.chaos_overload import burst, paced_outcomes, summarize_burst
from services.bench.chaos_phases import OVERLOAD_MAX_QUEUED_WORK_S, OVERLOAD_TOKENS, _capacity
from services.bench.chaos_stack import ENGINE_ARGS, ChaosStack, ChaosStackConfig
from services.bench.overload_step_trace import FLUSH_INTERVAL_S, TRACE_FLAG, read_step_trace
from services.bench.overload_ttft_split import split_outcomes, summarize_splits

BASE_GATEWAY_ARGS = ("--max-in-flight-requests", "256")
GATEWAY_BOUND = ("--max-queued-work-s", repr(OVERLOAD_MAX_QUEUED_WORK_S))
# variant name -> (the gateway's admission flags, the engine's extra flags); the first measures capacity
ENGINE_BOUND = ("--max-queue-wait-steps", "1")
ALL_VARIANTS = {
    "gateway-bound": (GATEWAY_BOUND, ()),  # the overload bench's gateway until now
    "engine-wait-1": (GATEWAY_BOUND, ENGINE_BOUND),  # both bounds
    "engine-wait-1-only": ((), ENGINE_BOUND),  # the engine's bound alone (the gateway sheds on its refusals)
}
VARIANTS = {name: ALL_VARIANTS[name] for name in ("gateway-bound", "engine-wait-1")}
MULTIPLES = {"1x": 1.0, "20x": 20.0}
RESULT_KEYS = ("codes", "admitted_ttft_p50_s", "admitted_ttft_p90_s", "admitted_ttft_p99_s", "rejection_p99_s")
RESULT_KEYS += ("refusal_reasons", "sample_rejection")


async def _level(stack: ChaosStack, trace_path: pathlib.Path, level: str, capacity: float, duration_s: float) -> dict:
    pids = {"gateway": stack.children["gateway"].pid, "engine-0": stack.children["engine-0"].pid}
    probe = ContentionProbe({**pids, "client": os.getpid()}).start()
    began_s = time.monotonic()
    outcomes = await paced_outcomes(
        stack.gateway_stub(),
        rate_per_s=capacity * MULTIPLES[level],
        duration_s=duration_s,
        max_tokens=OVERLOAD_TOKENS,
        timeout_s=60.0,
    )
    ended_s = time.monotonic()
    contention = await probe.stop()
    await asyncio.sleep(2 * FLUSH_INTERVAL_S + 0.5)  # the engine flushes its trace lines of the level
    trace = read_step_trace(trace_path)
    splits, num_missing = split_outcomes(outcomes, trace)
    result = summarize_burst(outcomes, ended_s - began_s)
    return {
        "level": level,
        **{key: getattr(result, key) for key in RESULT_KEYS},
        "split": {**summarize_splits(splits, trace, began_s, ended_s), "num_not_found_in_trace": num_missing},
        "contention": contention,
    }


def _order(variants: dict, round_index: int) -> list[tuple[str, str]]:
    """(variant, level) pairs of one round: every variant at 1x, then at 20x; the variants' order alternates."""
    names = list(variants) if round_index % 2 == 0 else list(reversed(variants))
    return [(name, level) for level in MULTIPLES for name in names]


def _stack_config(log_dir: pathlib.Path, gateway_args: tuple, engine_args: tuple) -> ChaosStackConfig:
    log_dir.mkdir(parents=True, exist_ok=True)
    return ChaosStackConfig(
        log_dir=log_dir,
        num_engines=1,
        with_predictor=False,
        gateway_in_process=False,
        gateway_args=(*BASE_GATEWAY_ARGS, *gateway_args),
        engine_args=(
            TRACE_FLAG,
            str(log_dir / "engine-0.steps.jsonl"),
            *ENGINE_ARGS,
            "--max-waiting-requests",
            "64",
            *engine_args,
        ),
        engine_module="services.bench.overload_step_trace",
        startup_timeout_s=300.0,  # a loaded shared machine took over 120 s to start an engine
    )


async def run(rounds: int, duration_s: float, log_dir: pathlib.Path, variants: dict = VARIANTS) -> dict:
    stacks: dict[str, ChaosStack] = {}
    try:
        for name, (gateway_args, engine_args) in variants.items():
            stacks[name] = ChaosStack(_stack_config(log_dir / name, gateway_args, engine_args))
            await stacks[name].start()
            await burst(stacks[name].gateway_stub(), 16, max_tokens=OVERLOAD_TOKENS, timeout_s=120.0)  # first steps
        capacity = await _capacity(stacks[next(iter(variants))], 10.0)
        if capacity <= 0:
            raise RuntimeError("no request completed while measuring capacity: the machine is too loaded to measure")
        runs = []
        for round_index in range(rounds):
            for name, level in _order(variants, round_index):
                trace_path = log_dir / name / "engine-0.steps.jsonl"
                figures = await _level(stacks[name], trace_path, level, capacity, duration_s)
                runs.append({"round": round_index, "variant": name, **figures})
                _print_level(runs[-1])
                await asyncio.sleep(1.0)
        variant_flags = {name: {"gateway": list(g), "engine": list(e)} for name, (g, e) in variants.items()}
        return {"capacity_requests_per_s": capacity, "variants": variant_flags, "runs": runs}
    finally:
        await asyncio.gather(*(stack.stop() for stack in stacks.values()), return_exceptions=True)


def _print_level(run: dict) -> None:
    split = run["split"]
    parts = ("ttft_s", "way_in_s", "queue_s", "first_steps_s", "way_out_s", "num_steps_waited", "first_step_duration_s")
    line = {"round": run["round"], "variant": run["variant"], "level": run["level"], "codes": run["codes"]}
    line["load_1m"] = round(run["contention"]["load_average_1m"], 2)
    line.update({part: split.get(part) for part in parts})
    line["tail_mean"] = split.get("tail_mean")
    line["steps"] = split.get("steps")
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench.overload_ttft_bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration-s", type=float, default=20.0, help="seconds of each level")
    parser.add_argument("--output", type=pathlib.Path, default=None)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, the first measures capacity: {list(ALL_VARIANTS)}",
    )
    args = parser.parse_args(argv)
    names = [name for name in args.variants.split(",") if name]
    unknown = [name for name in names if name not in ALL_VARIANTS]
    if unknown or not names:
        parser.error(f"--variants: unknown {unknown}; choose from {list(ALL_VARIANTS)}")
    from services.bench.results import build_report, write_report

    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="alise-ttft-split-"))
    figures = asyncio.run(run(args.rounds, args.duration_s, log_dir, {name: ALL_VARIANTS[name] for name in names}))
    if args.output is not None:
        config = {key: value for key, value in vars(args).items() if key != "output"}
        print(f"saved {write_report(args.output, build_report('overload_ttft_split', config, figures))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
