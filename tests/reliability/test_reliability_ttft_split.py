"""The overload bench's per-request TTFT split (services/bench/overload_ttft_split.py) on a written trace."""

from __future__ import annotations

import json
import types

import pytest

from services.bench.chaos_load import StreamOutcome
from services.bench.overload_step_trace import StepTraceRecorder, read_step_trace
from services.bench.overload_ttft_split import split_outcomes, summarize_splits


class _Request:
    def __init__(self, request_id: str, arrival_s: float) -> None:
        self.request_id = request_id
        self.arrival_time_s = arrival_s
        self.first_scheduled_time_s: float | None = None
        self.first_token_time_s: float | None = None


def _step(core, recorder: StepTraceRecorder, started_s: float, ended_s: float, running: list, finished: int = 0):
    """One traced step of a fake core: `running` after it, `finished` requests ended in it."""
    core.num_steps += 1
    core.scheduler.running = running
    core.scheduler.finished_request_ids = ["x"] * finished
    core.last_step = types.SimpleNamespace(num_scheduled_tokens=len(running) + 10, num_sampled_tokens=len(running))
    recorder.on_step(core, started_s, ended_s, core.num_steps - 1)


def test_a_request_that_waited_two_steps_is_split_into_parts_that_sum_to_its_ttft(tmp_path):
    path = tmp_path / "steps.jsonl"
    old = _Request("old", 0.0)
    old.first_scheduled_time_s, old.first_token_time_s = 0.001, 0.009
    new = _Request("new", 0.105)  # arrives 5 ms into step 1
    core = types.SimpleNamespace(num_steps=0, scheduler=types.SimpleNamespace(running=[], waiting=[]))
    with open(path, "w") as sink:
        recorder = StepTraceRecorder(sink)
        _step(core, recorder, 0.0, 0.01, [old])
        _step(core, recorder, 0.1, 0.12, [old])  # step 1: new arrives during it
        _step(core, recorder, 0.12, 0.14, [old])  # step 2: no place for it yet
        new.first_scheduled_time_s, new.first_token_time_s = 0.1401, 0.165
        _step(core, recorder, 0.14, 0.166, [old, new], finished=1)  # step 3: its first step, 2 + 1 finished
    trace = read_step_trace(path)
    assert json.loads(path.read_text().splitlines()[0])["s"][2:] == [1, 0, 11, 1, 0]
    outcome = StreamOutcome(0, "p", 32, 0, started_s=0.1, first_token_s=0.175)
    outcome.engine_queue_s, outcome.engine_ttft_s = 0.1401 - 0.105, 0.165 - 0.105
    missing = StreamOutcome(1, "p", 32, 0, started_s=0.1, first_token_s=0.2)
    missing.engine_queue_s, missing.engine_ttft_s = 0.5, 0.6  # not in the trace
    (split,), num_missing = split_outcomes([outcome, missing], trace)
    assert num_missing == 1
    assert split.way_in_s == pytest.approx(0.005) and split.queue_s == pytest.approx(0.0351)
    assert split.first_steps_s == pytest.approx(0.0249) and split.way_out_s == pytest.approx(0.01)
    assert split.way_in_s + split.queue_s + split.first_steps_s + split.way_out_s == pytest.approx(split.ttft_s)
    assert split.num_steps_waited == 2 and split.arrival_phase == pytest.approx(0.25)
    assert (split.first_step_batch_size, split.first_step_num_tokens, split.num_new_in_first_step) == (3, 12, 1)
    summary = summarize_splits([split], trace, 0.0, 1.0)
    assert summary["num_split"] == 1 and summary["tail_mean"]["num_steps_waited"] == 2
    assert summary["steps"]["num_steps"] == 4 and summary["steps"]["max_batch_size"] == 3
