"""Admitted TTFT at 20x vs 1x capacity with the gateway's wait bound in seconds or in engine steps, side by side.

The goal (issue 21): requests admitted at 20x capacity get a p99 TTFT no worse than at 1x. With the
bound in seconds (`--max-queued-work-s 0.05`, about two steps of the tiny model on 2 cores) a request
admitted at 20x waited ~1.5 steps in the engine queue (p50 0.039 s against 0.010 s at 1x,
overload_contention.json): it was sent when a place would free within 0.05 s, i.e. often a step
before it did. `--max-queued-steps 1` sends it only when a place is free or frees at the end of the
step under way (engine_saturation), so it waits at most the rest of that step, as at any load.

    one engine (no predictor: every request's length is exact, 32 tokens, ignore_eos)
    gateway "seconds": --max-queued-work-s 0.05          gateway "steps": --max-queued-steps 1
    capacity measured once (closed loop through "seconds"), then per round, alternating the order:
        1x and 20x open-loop arrivals through each gateway, one gateway at a time

Both gateways are separate processes on the same engine (each counts only its own requests, so only
one is used at a time); the CPU each process used and the load average are recorded per level.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import tempfile

from services.bench.chaos_contention import ContentionProbe
from services.bench.chaos_overload import burst, paced_overload
from services.bench.chaos_phases import OVERLOAD_MAX_QUEUED_WORK_S, OVERLOAD_TOKENS, _capacity
from services.bench.chaos_stack import ENGINE_ARGS, ChaosStack, ChaosStackConfig
from services.common.contracts import gateway_service_pb2_grpc

BASE_GATEWAY_ARGS = ("--max-in-flight-requests", "256")
VARIANTS = {
    "gateway": ("seconds", ("--max-queued-work-s", repr(OVERLOAD_MAX_QUEUED_WORK_S))),
    "gateway-steps": ("steps", ("--max-queued-steps", "1")),
}
# --variant both: the steps bound on top of the seconds bound (the queued-work term keeps a batch below
# full from filling in one cohort)
BOTH_VARIANT = ("steps+seconds", ("--max-queued-steps", "1", "--max-queued-work-s", repr(OVERLOAD_MAX_QUEUED_WORK_S)))
MULTIPLES = {"1x": 1.0, "20x": 20.0}
RESULT_KEYS = (
    "codes",
    "admitted_ttft_p50_s",
    "admitted_ttft_p90_s",
    "admitted_ttft_p99_s",
    "rejection_p99_s",
    "admitted_engine_queue_p50_s",
    "admitted_engine_queue_p90_s",
    "admitted_engine_queue_p99_s",
    "admitted_first_step_p50_s",
    "admitted_first_step_p90_s",
    "admitted_engine_ttft_p99_s",
    "admitted_outside_engine_p99_s",
    "refusal_reasons",
    "sample_rejection",
)


async def _level(stack: ChaosStack, gateway: str, bound: str, level: str, capacity: float, duration_s: float) -> dict:
    stub = gateway_service_pb2_grpc.GatewayServiceStub(stack.channel(gateway))
    pids = {"gateway": stack.children[gateway].pid, "engine-0": stack.children["engine-0"].pid}
    probe = ContentionProbe({**pids, "client": os.getpid()}).start()
    result = await paced_overload(
        stub, rate_per_s=capacity * MULTIPLES[level], duration_s=duration_s, max_tokens=OVERLOAD_TOKENS, timeout_s=60.0
    )
    return {
        "bound": bound,
        "level": level,
        **{key: getattr(result, key) for key in RESULT_KEYS},
        "contention": await probe.stop(),
    }


def _order(round_index: int) -> list[tuple[str, str]]:
    """(gateway, level) pairs of one round: both bounds at 1x, then at 20x; the first bound alternates."""
    gateways = ["gateway", "gateway-steps"] if round_index % 2 == 0 else ["gateway-steps", "gateway"]
    return [(gateway, level) for level in MULTIPLES for gateway in gateways]


async def run(rounds: int, duration_s: float, log_dir: pathlib.Path, variants: dict = VARIANTS) -> dict:
    config = ChaosStackConfig(
        log_dir=log_dir,
        num_engines=1,
        with_predictor=False,
        gateway_in_process=False,
        gateway_args=(*BASE_GATEWAY_ARGS, *variants["gateway"][1]),
        engine_args=(*ENGINE_ARGS, "--max-waiting-requests", "64"),
        startup_timeout_s=300.0,  # a loaded shared machine took over 120 s to start an engine
    )
    stack = ChaosStack(config)
    await stack.start()
    try:
        await stack.add_gateway("gateway-steps", (*BASE_GATEWAY_ARGS, *variants["gateway-steps"][1]))
        for gateway in variants:  # first steps, rates and the batch capacity known to both gateways
            stub = gateway_service_pb2_grpc.GatewayServiceStub(stack.channel(gateway))
            await burst(stub, 16, max_tokens=OVERLOAD_TOKENS, timeout_s=120.0)
        capacity = await _capacity(stack, 10.0)
        if capacity <= 0:
            raise RuntimeError("no request completed while measuring capacity: the machine is too loaded to measure")
        runs = []
        for round_index in range(rounds):
            for gateway, level in _order(round_index):
                bound = variants[gateway][0]
                runs.append({"round": round_index, **await _level(stack, gateway, bound, level, capacity, duration_s)})
                print({k: v for k, v in runs[-1].items() if k not in ("contention", "sample_rejection")}, flush=True)
                await asyncio.sleep(2.0)  # the admitted streams of the level drain
        return {
            "capacity_requests_per_s": capacity,
            "variants": {v[0]: list(v[1]) for v in variants.values()},
            "runs": runs,
        }
    finally:
        await stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench.overload_steps_bound", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration-s", type=float, default=20.0, help="seconds of each level")
    parser.add_argument("--output", type=pathlib.Path, default=None)
    parser.add_argument(
        "--steps-variant", choices=("steps", "both"), default="steps", help="both: steps bound + the seconds bound"
    )
    args = parser.parse_args(argv)
    variants = {**VARIANTS, "gateway-steps": BOTH_VARIANT} if args.steps_variant == "both" else VARIANTS
    from services.bench.results import save_cli_report

    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="alise-steps-"))
    figures = asyncio.run(run(args.rounds, args.duration_s, log_dir, variants))
    save_cli_report(args, "overload_steps_bound", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
