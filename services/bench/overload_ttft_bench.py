"""Where admitted requests' TTFT goes at 20x capacity vs 1x, per request, from the engine's step trace.

    python -m services.bench.overload_ttft_bench [--rounds 2] [--duration-s 20] [--variants A,B]
        [--levels 1x,1.25x,2x,20x] [--output FILE]

One stack per variant (memory, one engine recording every step: overload_step_trace, one gateway
process), each with its own gateway and engine admission flags; only one is loaded at a time (an idle
engine sleeps). Capacity is measured once on the first variant (--capacity: saturated by default), then each
round runs every level through each variant, the variants' order alternating between rounds:

    1x          capacity x 1 streams per second (any multiple: 1.25x, 4x, 20x, ...)
    1x+decoys   1x's streams + capacity x 19 per second of requests the gateway refuses at once (an
                empty prompt): 20x's refusal CPU in the gateway and the load generator, 1x's engine work

Every admitted request's TTFT is split into the way in (client -> gateway -> engine), the engine queue
(the steps it waited, where in a step it arrived), its first step (duration, batch, tokens, the cohort
of other new requests in it) and the way out (overload_ttft_split). The CPU each process used, the
load average and the duration of the largest batch's steps are recorded per level.

Why 1x is the saturated throughput by default: a closed loop of 16 streams leaves seats idle while its
streams' requests travel to the engine and back, so at that "1x" the engine ran about 11 of its 16 seats
and admitted ~12% fewer requests per second than when overloaded. 100% load is the rate at which the
engine's admitted rate and batch stop growing (levels between 1x and 20x show where), and that is what
20x is compared with. `@own-core` variants keep the gateway's and the load generator's refusal CPU off
the engine's core, as separate pods would (README, Reliability).
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import os
import pathlib
import re
import tempfile
import time

from services.bench.chaos_contention import ContentionProbe
from services.bench.chaos_overload import burst, paced_outcomes, summarize_burst
from services.bench.chaos_phases import (
    OVERLOAD_MAX_QUEUED_WORK_S,
    OVERLOAD_TOKENS,
    _capacity,
    engine_on_own_core,
    saturated_capacity,
)
from services.bench.chaos_stack import ENGINE_ARGS, ChaosStack, ChaosStackConfig
from services.bench.cpu_pinning import all_cpus, own_core_split, pin_process
from services.bench.overload_contention import _decoys
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


class CapacityMethod(enum.StrEnum):
    """What 1x is (see the module docstring's last paragraph)."""

    SATURATED = "saturated"  # completions/s with the batch kept full under 4x arrivals and shedding
    CLOSED_LOOP = "closed-loop"  # 16 streams, each sending its next request when the last ends


DEFAULT_VARIANTS = ("gateway-bound", "engine-wait-1")
# "<variant>@own-core": that variant with the engine on a CPU core of its own and every other process of
# the run (gateway, memory, this load generator) on the rest, as separate pods would run (cpu_pinning)
OWN_CORE_SUFFIX = "@own-core"
# level -> (multiple of capacity of measured streams, multiple of capacity of decoys): requests the gateway
# refuses at once (an empty prompt, overload_contention): 20x's refusal CPU in the gateway and the client
# with exactly 1x's requests in the engine
NAMED_LEVELS = {"1x+decoys": (1.0, 19.0)}
MULTIPLE_LEVEL = re.compile(r"(\d+(?:\.\d+)?)x")
RESULT_KEYS = ("codes", "admitted_ttft_p50_s", "admitted_ttft_p90_s", "admitted_ttft_p99_s", "rejection_p99_s")
RESULT_KEYS += ("refusal_reasons", "sample_rejection", "admitted_engine_ttft_p99_s", "admitted_outside_engine_p99_s")


async def _level(
    stack: ChaosStack, trace_path: pathlib.Path, level: str, capacity: float, duration_s: float, own_core: bool
) -> dict:
    pids = {"gateway": stack.children["gateway"].pid, "engine-0": stack.children["engine-0"].pid}
    pin_process(os.getpid(), own_core_split()[1] if own_core else all_cpus())  # the load generator
    probe = ContentionProbe({**pids, "client": os.getpid()}).start()
    began_s = time.monotonic()
    streams_multiple, decoys_multiple = level_multiples(level)
    streams = paced_outcomes(
        stack.gateway_stub(),
        rate_per_s=capacity * streams_multiple,
        duration_s=duration_s,
        max_tokens=OVERLOAD_TOKENS,
        timeout_s=60.0,
    )
    decoy_codes: dict[str, int] = {}
    if decoys_multiple > 0:
        outcomes, decoy_codes = await asyncio.gather(
            streams, _decoys(stack.gateway_stub(), capacity * decoys_multiple, duration_s)
        )
    else:
        outcomes = await streams
    ended_s = time.monotonic()
    contention = await probe.stop()
    await asyncio.sleep(2 * FLUSH_INTERVAL_S + 0.5)  # the engine flushes its trace lines of the level
    trace = read_step_trace(trace_path)
    splits, num_missing = split_outcomes(outcomes, trace)
    result = summarize_burst(outcomes, ended_s - began_s)
    return {
        "level": level,
        **{key: getattr(result, key) for key in RESULT_KEYS},
        "admitted_per_s": round(result.codes.get("OK", 0) / result.wall_s, 3),  # flat past saturation
        "split": {**summarize_splits(splits, trace, began_s, ended_s), "num_not_found_in_trace": num_missing},
        "decoy_codes": decoy_codes,
        "contention": contention,
    }


def level_multiples(level: str) -> tuple[float, float]:
    """(measured streams, decoys) per second as multiples of capacity: "2.5x" -> (2.5, 0); or a named level."""
    if level in NAMED_LEVELS:
        return NAMED_LEVELS[level]
    match = MULTIPLE_LEVEL.fullmatch(level)
    if match is None or float(match.group(1)) <= 0:
        raise ValueError(
            f"level {level!r}: a positive multiple of capacity such as 1.5x, or one of {list(NAMED_LEVELS)}"
        )
    return float(match.group(1)), 0.0


def resolve_variant(name: str) -> tuple[tuple, tuple, bool]:
    """(gateway flags, engine flags, whether the engine gets a core of its own) of a --variants name."""
    base = name.removesuffix(OWN_CORE_SUFFIX)
    if base not in ALL_VARIANTS:
        raise ValueError(
            f"unknown variant {name!r}; choose from {list(ALL_VARIANTS)}, each optionally + {OWN_CORE_SUFFIX}"
        )
    return (*ALL_VARIANTS[base], name != base)


def _order(variants: dict, levels: list[str], round_index: int) -> list[tuple[str, str]]:
    """(variant, level) pairs of one round: every variant at each level in turn; the variants' order alternates."""
    names = list(variants) if round_index % 2 == 0 else list(reversed(variants))
    return [(name, level) for level in levels for name in names]


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


async def run(
    rounds: int,
    duration_s: float,
    log_dir: pathlib.Path,
    variants: dict,
    levels: tuple = ("1x", "20x"),
    capacity_method: CapacityMethod = CapacityMethod.SATURATED,
) -> dict:
    """`variants`: name -> resolve_variant(name); levels are multiples of the first variant's capacity."""
    stacks: dict[str, ChaosStack] = {}
    try:
        for name, (gateway_args, engine_args, own_core) in variants.items():
            stacks[name] = stack = ChaosStack(_stack_config(log_dir / name, gateway_args, engine_args))
            await stack.start()
            if own_core:
                engine_on_own_core(stack)
            await burst(stacks[name].gateway_stub(), 16, max_tokens=OVERLOAD_TOKENS, timeout_s=120.0)  # first steps
        first = next(iter(variants))
        pin_process(os.getpid(), own_core_split()[1] if variants[first][2] else all_cpus())
        closed_loop = await _capacity(stacks[first], 10.0)
        if closed_loop <= 0:
            raise RuntimeError("no request completed while measuring capacity: the machine is too loaded to measure")
        capacity = (
            closed_loop
            if capacity_method is CapacityMethod.CLOSED_LOOP
            else await saturated_capacity(stacks[first], closed_loop)
        )
        if capacity <= 0:
            raise RuntimeError("no request completed under 4x arrivals: the machine is too loaded to measure")
        runs = []
        for round_index in range(rounds):
            for name, level in _order(variants, list(levels), round_index):
                trace_path = log_dir / name / "engine-0.steps.jsonl"
                figures = await _level(stacks[name], trace_path, level, capacity, duration_s, variants[name][2])
                runs.append({"round": round_index, "variant": name, **figures})
                _print_level(runs[-1])
                await asyncio.sleep(1.0)
        variant_flags = {
            name: {"gateway": list(g), "engine": list(e), "engine_own_core": own}
            for name, (g, e, own) in variants.items()
        }
        return {
            "capacity_requests_per_s": capacity,
            "capacity_method": capacity_method.value,
            "closed_loop_capacity_requests_per_s": closed_loop,
            "variants": variant_flags,
            "runs": runs,
        }
    finally:
        await asyncio.gather(*(stack.stop() for stack in stacks.values()), return_exceptions=True)


def _print_level(run: dict) -> None:
    split = run["split"]
    parts = ("ttft_s", "way_in_s", "queue_s", "first_steps_s", "way_out_s", "num_steps_waited", "first_step_duration_s")
    line = {"round": run["round"], "variant": run["variant"], "level": run["level"], "codes": run["codes"]}
    line["admitted_per_s"] = run["admitted_per_s"]
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
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, the first measures capacity: {list(ALL_VARIANTS)}, each optionally + {OWN_CORE_SUFFIX}",
    )
    parser.add_argument(
        "--levels",
        default="1x,20x",
        help=f"comma-separated multiples of capacity (1x, 1.25x, 20x) or {list(NAMED_LEVELS)}",
    )
    parser.add_argument(
        "--capacity",
        type=CapacityMethod,
        choices=list(CapacityMethod),
        default=CapacityMethod.SATURATED,
        help="what 1x is: completions/s with the batch kept full under 4x arrivals (saturated), or the "
        "closed loop of 16 streams the overload phase uses (leaves seats idle: ~85%% of saturated)",
    )
    args = parser.parse_args(argv)
    levels = tuple(level for level in args.levels.split(",") if level)
    try:
        if not levels:
            raise ValueError("no level given")
        for level in levels:
            level_multiples(level)
    except ValueError as error:
        parser.error(f"--levels: {error}")
    names = [name for name in args.variants.split(",") if name]
    try:
        variants = {name: resolve_variant(name) for name in names}
    except ValueError as error:
        parser.error(f"--variants: {error}")
    if not variants:
        parser.error("--variants: none given")
    from services.bench.results import save_cli_report

    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="alise-ttft-split-"))
    figures = asyncio.run(run(args.rounds, args.duration_s, log_dir, variants, levels, args.capacity))
    save_cli_report(args, "overload_ttft_split", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
