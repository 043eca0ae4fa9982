"""A starved backlog in a minute: what the gateway holds when arrivals outrun the engines for a while.

The 30-minute soak saw the gateway's RSS rise from ~100 to ~147 MiB in its last minutes, when the
engines were starved (machine load 20-29) and bursts of streams with 300 s deadlines piled up behind
them. This reproduces that in a minute, on an idle machine: open-loop arrivals at `rate_per_s`
(several times what the engines finish) with long deadlines, so every request the servers admit
waits in the gateway as a live stream; the gateway's RSS and the streams it holds are sampled
every `sample_every_s`:

    in flight   streams the gateway admitted and has not ended (client side: started, not ended,
                not refused; a refusal ends within milliseconds)
    RSS         /proc of the gateway process, MiB
    per stream  RSS growth / in-flight growth between the first sample and the peak

With a gateway in-flight limit (`gateway_args`, e.g. --max-in-flight-requests 64) the backlog stops
at the limit and the rest are refused at once (RESOURCE_EXHAUSTED, QUEUE_FULL, naming the flag).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import random
import tempfile
import time
from dataclasses import asdict, dataclass

from services.bench.chaos_load import StreamOutcome, count_refusals, make_prompt, run_stream
from services.bench.chaos_stack import ChaosStack, ChaosStackConfig

MIB = 2**20


@dataclass(frozen=True)
class BacklogResult:
    """One backlog run (JSON-ready)."""

    gateway_args: list[str]
    rate_per_s: float
    duration_s: float
    num_streams: int
    codes: dict[str, int]  # "OK", or status/refusal reason (count_refusals' keys)
    sample_refusal: str  # one RESOURCE_EXHAUSTED message, verbatim
    peak_in_flight: int
    rss_start_mib: float
    rss_peak_mib: float
    rss_end_mib: float  # after every stream ended
    kib_per_stream: float  # (peak RSS - start RSS) / (in flight at the peak - at the start)
    load_average_1m: tuple[float, float]  # at the start and at the end
    samples: list[tuple[float, float, int]]  # (t_s, gateway RSS MiB, streams in flight)

    def to_json(self) -> dict:
        return asdict(self)


def _in_flight(outcomes: list[StreamOutcome]) -> int:
    return sum(1 for o in outcomes if o.ended_s == 0.0)


async def _sample(stack: ChaosStack, outcomes: list[StreamOutcome], began_s: float, every_s: float, into: list) -> None:
    while True:
        into.append((round(time.monotonic() - began_s, 2), stack.rss_bytes("gateway") / MIB, _in_flight(outcomes)))
        await asyncio.sleep(every_s)


async def starve(
    stack: ChaosStack, *, rate_per_s: float, duration_s: float, timeout_s: float = 300.0, every_s: float = 1.0, seed=0
) -> BacklogResult:
    """Open-loop arrivals for duration_s, then waits for every stream; the stack's gateway is a process."""
    stub, rng = stack.gateway_stub(), random.Random(seed)
    warm = [StreamOutcome(-1 - i, make_prompt(rng, 8), 8, i, time.monotonic()) for i in range(16)]
    await asyncio.gather(*(run_stream(stub, o, timeout_s=60.0) for o in warm))  # tokenizer, rates, channels
    outcomes: list[StreamOutcome] = []
    tasks: list[asyncio.Task] = []
    samples: list[tuple[float, float, int]] = []
    load_before = os.getloadavg()[0]
    began_s = time.monotonic()
    sampler = asyncio.create_task(_sample(stack, outcomes, began_s, every_s, samples))
    for index in range(int(rate_per_s * duration_s)):
        delay_s = began_s + index / rate_per_s - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        max_tokens, num_words = rng.randint(8, 64), rng.randint(4, 40)
        outcome = StreamOutcome(index, make_prompt(rng, num_words), max_tokens, rng.getrandbits(32), time.monotonic())
        outcomes.append(outcome)
        tasks.append(asyncio.create_task(run_stream(stub, outcome, timeout_s=timeout_s)))
    await asyncio.gather(*tasks)
    await asyncio.sleep(2 * every_s)
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    return _summarize(stack, outcomes, samples, rate_per_s, duration_s, (load_before, os.getloadavg()[0]))


def _summarize(stack, outcomes, samples, rate_per_s, duration_s, loads) -> BacklogResult:
    peak = max(samples, key=lambda sample: sample[1])
    first = samples[0]
    refused = [o for o in outcomes if o.code == "RESOURCE_EXHAUSTED"]
    return BacklogResult(
        gateway_args=list(stack.config.gateway_args),
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        num_streams=len(outcomes),
        codes={"OK": sum(o.code == "OK" for o in outcomes), **count_refusals(outcomes)},
        sample_refusal=refused[0].details if refused else "",
        peak_in_flight=max(sample[2] for sample in samples),
        rss_start_mib=first[1],
        rss_peak_mib=peak[1],
        rss_end_mib=samples[-1][1],
        kib_per_stream=(peak[1] - first[1]) * 1024 / max(1, peak[2] - first[2]),
        load_average_1m=loads,
        samples=samples,
    )


async def _run_variant(args: argparse.Namespace, gateway_args: tuple[str, ...]) -> BacklogResult:
    log_dir = pathlib.Path(tempfile.mkdtemp(prefix="alise-backlog-"))
    config = ChaosStackConfig(
        log_dir=log_dir,
        with_predictor=False,
        gateway_in_process=False,
        gateway_args=gateway_args,
        startup_timeout_s=300.0,  # a loaded shared machine (load 20-30) took over 120 s to start the engines
    )
    stack = ChaosStack(config)
    await stack.start()
    try:
        return await starve(stack, rate_per_s=args.rate_per_s, duration_s=args.duration_s)
    finally:
        await stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench.soak_backlog", description=__doc__)
    parser.add_argument("--rate-per-s", type=float, default=40.0, help="open-loop arrivals (capacity: ~17/s)")
    parser.add_argument("--duration-s", type=float, default=40.0)
    parser.add_argument(
        "--limits", default="0,128", help="gateway --max-in-flight-requests per run, alternated (0 = its default)"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--output", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    from services.bench.results import save_cli_report

    runs = []
    for _ in range(args.rounds):
        for limit in (int(value) for value in args.limits.split(",")):
            gateway_args = ("--max-in-flight-requests", str(limit)) if limit > 0 else ()
            result = asyncio.run(_run_variant(args, gateway_args))
            summary = {key: value for key, value in result.to_json().items() if key != "samples"}
            print(json.dumps(summary), flush=True)
            runs.append(result.to_json())
    save_cli_report(args, "soak_backlog", {"runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
