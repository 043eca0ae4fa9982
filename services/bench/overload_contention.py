"""Is the 20x admitted-TTFT tail admission's or the refusals' CPU? A contention-matched control.

At 20x capacity the overload phase's admitted requests have a longer TTFT than at 1x (quiet machine:
p99 0.124-0.129 s vs 0.078-0.086 s). Two causes were named: admission (a request admitted when a
place is about to free waits for it) and CPU contention (the load generator and the gateway spend
the 2 shared cores on ~300 refusals per second, which the engine's steps lose). This tells them
apart by a third level that has 20x's contention without 20x's admission:

    1x          capacity x 1 streams per second (the admitted ones: what is measured)
    20x         capacity x 20 streams per second through the same gateway
    1x+decoys   1x streams + capacity x 19 per second of requests the gateway refuses at once
                without asking any engine (an empty prompt: INVALID_ARGUMENT in the same handler,
                after the same check_room), so the client and the gateway do about 20x's per-call
                work while the engine sees exactly 1x's requests

If 1x+decoys has about 20x's admitted TTFT, the gap is the refusals' CPU; if it stays at 1x's, the
gap is admission. The levels alternate (rounds), on one stack, with the CPU each process used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import tempfile
import time

import grpc

from services.bench.chaos_contention import ContentionProbe
from services.bench.chaos_overload import burst, paced_overload
from services.bench.chaos_phases import OVERLOAD_MAX_QUEUED_WORK_S, OVERLOAD_TOKENS, _capacity
from services.bench.chaos_stack import ENGINE_ARGS, ChaosStack, ChaosStackConfig
from services.common.contracts import common_pb2, gateway_service_pb2

DECOY = gateway_service_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(max_tokens=OVERLOAD_TOKENS))
LEVELS = ("1x", "20x", "1x+decoys")


async def _decoys(stub, rate_per_s: float, duration_s: float) -> dict[str, int]:
    """Open-loop refused-at-once requests at rate_per_s; returns their status counts."""
    codes: dict[str, int] = {}

    async def one() -> None:
        try:
            async for _ in stub.Generate(DECOY, timeout=10.0):
                pass
            code = "OK"
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        codes[code] = codes.get(code, 0) + 1

    began_s, tasks = time.monotonic(), []
    for index in range(int(rate_per_s * duration_s)):
        delay_s = began_s + index / rate_per_s - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return codes


async def _level(stack: ChaosStack, level: str, capacity: float, duration_s: float) -> dict:
    stub = stack.gateway_stub()
    pids = {name: stack.children[name].pid for name in ("gateway", "engine-0")}
    probe = ContentionProbe({**pids, "client": os.getpid()}).start()
    multiple = 20.0 if level == "20x" else 1.0
    streams = paced_overload(
        stub, rate_per_s=capacity * multiple, duration_s=duration_s, max_tokens=OVERLOAD_TOKENS, timeout_s=60.0
    )
    decoy_codes: dict[str, int] = {}
    if level == "1x+decoys":
        result, decoy_codes = await asyncio.gather(streams, _decoys(stub, capacity * 19.0, duration_s))
    else:
        result = await streams
    keys = ("codes", "admitted_ttft_p50_s", "admitted_ttft_p90_s", "admitted_ttft_p99_s", "rejection_p99_s")
    keys += ("admitted_engine_queue_p50_s", "admitted_first_step_p50_s", "admitted_first_step_p90_s")
    keys += ("admitted_engine_ttft_p99_s", "admitted_outside_engine_p99_s", "refusal_reasons", "sample_rejection")
    return {
        "level": level,
        **{key: getattr(result, key) for key in keys},
        "decoy_codes": decoy_codes,
        "contention": await probe.stop(),
    }


async def run(rounds: int, duration_s: float, log_dir: pathlib.Path) -> dict:
    config = ChaosStackConfig(
        log_dir=log_dir,
        num_engines=1,
        with_predictor=False,
        gateway_in_process=False,
        gateway_args=("--max-in-flight-requests", "256", "--max-queued-work-s", repr(OVERLOAD_MAX_QUEUED_WORK_S)),
        engine_args=(*ENGINE_ARGS, "--max-waiting-requests", "64"),
        startup_timeout_s=300.0,  # a loaded shared machine took over 120 s to start an engine
    )
    stack = ChaosStack(config)
    await stack.start()
    try:
        await burst(stack.gateway_stub(), 16, max_tokens=OVERLOAD_TOKENS, timeout_s=120.0)  # first steps, rates
        capacity = await _capacity(stack, 10.0)
        if capacity <= 0:
            raise RuntimeError("no request completed while measuring capacity: the machine is too loaded to measure")
        runs = []
        for _ in range(rounds):
            for level in LEVELS:
                runs.append(await _level(stack, level, capacity, duration_s))
                print({k: v for k, v in runs[-1].items() if k != "contention"}, flush=True)
                await asyncio.sleep(2.0)  # the admitted streams of the level drain
        return {"capacity_requests_per_s": capacity, "runs": runs}
    finally:
        await stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench.overload_contention", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration-s", type=float, default=20.0, help="seconds of each level")
    parser.add_argument("--output", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    from services.bench.results import save_cli_report

    figures = asyncio.run(run(args.rounds, args.duration_s, pathlib.Path(tempfile.mkdtemp(prefix="alise-contention-"))))
    save_cli_report(args, "overload_contention", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
