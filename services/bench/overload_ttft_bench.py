"""Where admitted requests' TTFT goes at 20x capacity vs 1x, per request, from the engine's step trace.

    python -m services.bench.overload_ttft_bench [--rounds 2] [--duration-s 20] [--variants A,B] [--levels 1x,20x]
        [--output FILE]

One stack per variant (memory, one engine recording every step: overload_step_trace, one gateway
process), each with its own gateway and engine admission flags; only one is loaded at a time (an idle
engine sleeps). Capacity is measured once on the first variant (closed loop, 16 streams), then each
round runs every level through each variant, the variants' order alternating between rounds:

    1x          capacity x 1 streams per second
    20x         capacity x 20 streams per second
    1x+decoys   1x's streams + capacity x 19 per second of requests the gateway refuses at once (an
                empty prompt): 20x's refusal CPU in the gateway and the load generator, 1x's engine work

Every admitted request's TTFT is split into the way in (client -> gateway -> engine), the engine queue
(the steps it waited, where in a step it arrived), its first step (duration, batch, tokens, the cohort
of other new requests in it) and the way out (overload_ttft_split). The CPU each process used, the
load average and the duration of the largest batch's steps are recorded per level.
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
VARIANTS = {name: ALL_VARIANTS[name] for name in ("gateway-bound", "engine-wait-1")}
# level -> (multiple of capacity of measured streams, multiple of capacity of decoys): requests the gateway
# refuses at once (an empty prompt, overload_contention): 20x's refusal CPU in the gateway and the client
# with exactly 1x's requests in the engine
LEVELS = {"1x": (1.0, 0.0), "20x": (20.0, 0.0), "1x+decoys": (1.0, 19.0)}
RESULT_KEYS = ("codes", "admitted_ttft_p50_s", "admitted_ttft_p90_s", "admitted_ttft_p99_s", "rejection_p99_s")
RESULT_KEYS += ("refusal_reasons", "sample_rejection")


async def _level(stack: ChaosStack, trace_path: pathlib.Path, level: str, capacity: float, duration_s: float) -> dict:
    pids = {"gateway": stack.children["gateway"].pid, "engine-0": stack.children["engine-0"].pid}
    probe = ContentionProbe({**pids, "client": os.getpid()}).start()
    began_s = time.monotonic()
    streams_multiple, decoys_multiple = LEVELS[level]
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
        "split": {**summarize_splits(splits, trace, began_s, ended_s), "num_not_found_in_trace": num_missing},
        "decoy_codes": decoy_codes,
        "contention": contention,
    }


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
    rounds: int, duration_s: float, log_dir: pathlib.Path, variants: dict = VARIANTS, levels: tuple = ("1x", "20x")
) -> dict:
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
            for name, level in _order(variants, list(levels), round_index):
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
    parser.add_argument("--levels", default="1x,20x", help=f"comma-separated, of {list(LEVELS)}")
    args = parser.parse_args(argv)
    levels = tuple(level for level in args.levels.split(",") if level)
    if not levels or any(level not in LEVELS for level in levels):
        parser.error(f"--levels: choose from {list(LEVELS)}")
    names = [name for name in args.variants.split(",") if name]
    unknown = [name for name in names if name not in ALL_VARIANTS]
    if unknown or not names:
        parser.error(f"--variants: unknown {unknown}; choose from {list(ALL_VARIANTS)}")
    from services.bench.results import save_cli_report

    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="alise-ttft-split-"))
    variants = {name: ALL_VARIANTS[name] for name in names}
    figures = asyncio.run(run(args.rounds, args.duration_s, log_dir, variants, levels))
    save_cli_report(args, "overload_ttft_split", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
