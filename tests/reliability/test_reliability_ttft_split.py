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


def test_the_bench_takes_any_multiple_of_capacity_as_a_level_and_refuses_nonsense():
    from services.bench.overload_ttft_bench import level_multiples, main

    assert level_multiples("1.25x") == (1.25, 0.0) and level_multiples("20x") == (20.0, 0.0)
    assert level_multiples("1x+decoys") == (1.0, 19.0)
    for bad in ("0x", "x", "2", "-1x", "1.5xx"):
        with pytest.raises(ValueError, match="multiple of capacity"):
            level_multiples(bad)
    with pytest.raises(SystemExit):
        main(["--levels", "1x,fast"])


def test_a_variant_with_the_own_core_suffix_pins_and_an_unknown_one_is_refused():
    from services.bench.overload_ttft_bench import ALL_VARIANTS, resolve_variant

    assert resolve_variant("engine-wait-1") == (*ALL_VARIANTS["engine-wait-1"], False)
    assert resolve_variant("engine-wait-1@own-core") == (*ALL_VARIANTS["engine-wait-1"], True)
    with pytest.raises(ValueError, match="unknown variant"):
        resolve_variant("fast@own-core")


def test_own_core_gives_a_process_and_all_its_threads_one_cpu_and_the_others_the_rest():
    import os
    import subprocess
    import sys

    from services.bench.cpu_pinning import all_cpus, split_own_core

    if len(all_cpus()) < 2:
        pytest.skip("needs 2 CPUs")
    script = "import threading, time; [threading.Thread(target=time.sleep, args=(30,)).start() for _ in range(3)]; time.sleep(30)"
    owner, other = (subprocess.Popen([sys.executable, "-c", script]) for _ in range(2))
    try:
        import time

        time.sleep(0.5)  # its threads started
        own, rest = split_own_core(owner.pid, [other.pid])
        assert own.isdisjoint(rest) and own | rest == all_cpus()
        for pid, cpus in ((owner.pid, own), (other.pid, rest)):
            tasks = os.listdir(f"/proc/{pid}/task")
            assert len(tasks) >= 4 and all(os.sched_getaffinity(int(t)) == cpus for t in tasks)
    finally:
        owner.kill()
        other.kill()
