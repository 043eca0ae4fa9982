"""An engine process that records every step, for splitting admitted requests' TTFT in the overload bench.

`python -m services.bench.overload_step_trace --step-trace-path FILE [engine flags]` runs the ordinary
engine (`services.engine`) with `EngineCore.step` wrapped, in this process only: the engine's code and
its hot path stay as they are, and only a bench that asks for it pays the few microseconds per step.
Each step appends one JSON line, and each request its first scheduled step and its first token:

    {"s": [started_s, ended_s, num_running, num_waiting, num_scheduled_tokens, num_sampled_tokens, num_finished]}
    {"r": [request_id, arrival_s, first_scheduled_s, step_index]}  (at the step that first computed it)
    {"t": [request_id, first_token_s, step_index]}                 (at the step that made its first token)

Times are `time.monotonic()` (CLOCK_MONOTONIC: one clock for every process on the machine, so the
client's call and first token line up with the engine's arrival and steps). The engine's request ids
are the gateway's own, so a client finds its request by the timings of its final message: the
engine's queue time and TTFT are first_scheduled_s - arrival_s and first_token_s - arrival_s, the
same doubles (`EngineRequestTimes.key`). num_running and num_waiting are
counted after the step (the requests that finished in it: num_finished). Step indexes count the
steps that ran (an empty schedule is not a step), from 0. A request that runs and finishes within one
step is missed (the overload bench's requests make 32 tokens). The file is flushed every
FLUSH_INTERVAL_S and at exit; the reader (`read_step_trace`) takes whole lines only.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from dataclasses import dataclass, field
from typing import IO

FLUSH_INTERVAL_S = 0.5
TRACE_FLAG = "--step-trace-path"


class StepTraceRecorder:
    """Appends the lines above for each step of one EngineCore (engine thread only)."""

    def __init__(self, sink: IO[str]) -> None:
        self._sink = sink
        self._num_steps = 0
        self._scheduled: set[str] = set()  # requests whose first scheduled step is recorded
        self._first_token: set[str] = set()  # requests whose first token is recorded
        self._flushed_at_s = time.monotonic()

    def on_step(self, core, started_s: float, ended_s: float, num_steps_before: int) -> None:
        if core.num_steps == num_steps_before:  # nothing was scheduled: not a step
            return
        scheduler, step = core.scheduler, core.last_step
        record = [started_s, ended_s, len(scheduler.running), len(scheduler.waiting)]
        record += [step.num_scheduled_tokens, step.num_sampled_tokens, len(scheduler.finished_request_ids)]
        lines = [json.dumps({"s": record})]
        index = self._num_steps
        for request in scheduler.running:
            request_id = request.request_id
            if request_id not in self._scheduled and request.first_scheduled_time_s is not None:
                self._scheduled.add(request_id)
                record = [request_id, request.arrival_time_s, request.first_scheduled_time_s, index]
                lines.append(json.dumps({"r": record}))
            if request_id not in self._first_token and request.first_token_time_s is not None:
                self._first_token.add(request_id)
                lines.append(json.dumps({"t": [request_id, request.first_token_time_s, index]}))
        self._num_steps += 1
        self._sink.write("\n".join(lines) + "\n")
        if ended_s - self._flushed_at_s >= FLUSH_INTERVAL_S:
            self._sink.flush()
            self._flushed_at_s = ended_s


def install(path: str) -> StepTraceRecorder:
    """Wraps EngineCore.step in this process so each step is recorded into `path` (truncated)."""
    from services.engine.engine_core import EngineCore

    sink = open(path, "w", buffering=1 << 16)  # noqa: SIM115 (open for the process's life, closed at exit)
    atexit.register(sink.close)
    recorder = StepTraceRecorder(sink)
    untraced_step = EngineCore.step

    def traced_step(core):
        num_steps_before = core.num_steps
        started_s = time.monotonic()
        results = untraced_step(core)
        recorder.on_step(core, started_s, time.monotonic(), num_steps_before)
        return results

    EngineCore.step = traced_step  # type: ignore[method-assign]
    _trace_queue_wait_checks(sink)
    return recorder


def _trace_queue_wait_checks(sink: IO[str]) -> None:
    """Each --max-queue-wait-steps check as {"a": [at_s, steps_now, profile_steps, wait_steps, num_live, admitted]}
    (asyncio thread: its lines go to the same buffered file between the engine thread's writes)."""
    from services.engine import admission_control

    untraced_check = admission_control.AdmissionControl._check_queue_wait

    def traced_check(control, profile) -> None:
        places = profile.places
        wait_steps = admission_control.steps_until_place(places, control.num_live, control.__contains__)
        record = [time.monotonic(), places.steps_now(), places.num_steps, wait_steps, control.num_live, True]
        try:
            untraced_check(control, profile)
        except Exception:
            record[-1] = False
            raise
        finally:
            if control.limits.max_queue_wait_steps > 0:
                sink.write(json.dumps({"a": record}) + "\n")

    admission_control.AdmissionControl._check_queue_wait = traced_check  # type: ignore[method-assign]


@dataclass
class EngineRequestTimes:
    """One request as the engine thread saw it (monotonic seconds; step indexes into StepTrace.steps)."""

    arrival_s: float
    first_scheduled_s: float
    first_scheduled_step: int
    first_token_s: float | None = None
    first_token_step: int | None = None

    @property
    def key(self) -> tuple[float, float] | None:
        """(queue time, TTFT) exactly as the engine reports them in the final message's timings."""
        if self.first_token_s is None:
            return None
        return (self.first_scheduled_s - self.arrival_s, self.first_token_s - self.arrival_s)


@dataclass
class StepTrace:
    """A trace file read back: steps in order, and every request by its engine id."""

    steps: list[list[float]] = field(default_factory=list)  # the "s" records
    requests: dict[str, EngineRequestTimes] = field(default_factory=dict)
    queue_wait_checks: list[list] = field(default_factory=list)  # the "a" records

    def by_timings(self) -> dict[tuple[float, float], EngineRequestTimes]:
        """The requests that made a token, by (queue time, TTFT) (see EngineRequestTimes.key)."""
        return {request.key: request for request in self.requests.values() if request.key is not None}


def read_step_trace(path) -> StepTrace:
    """Parses the whole lines written so far (a line cut by a flush in progress is skipped)."""
    trace = StepTrace()
    with open(path) as source:
        for line in source:
            if not line.endswith("\n"):
                break
            record = json.loads(line)
            if "s" in record:
                trace.steps.append(record["s"])
            elif "r" in record:
                request_id, arrival_s, first_scheduled_s, index = record["r"]
                trace.requests[request_id] = EngineRequestTimes(arrival_s, first_scheduled_s, index)
            elif "a" in record:
                trace.queue_wait_checks.append(record["a"])
            elif record["t"][0] in trace.requests:
                request_id, first_token_s, index = record["t"]
                trace.requests[request_id].first_token_s = first_token_s
                trace.requests[request_id].first_token_step = index
    return trace


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if TRACE_FLAG not in argv or argv.index(TRACE_FLAG) + 1 >= len(argv):
        print(f"usage: python -m services.bench.overload_step_trace {TRACE_FLAG} FILE [engine flags]", file=sys.stderr)
        return 2
    at = argv.index(TRACE_FLAG)
    install(argv[at + 1])
    del argv[at : at + 2]
    from services.engine.__main__ import main as engine_main

    return engine_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
