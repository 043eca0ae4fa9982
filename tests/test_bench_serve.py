"""`alise bench serve` against real services: an in-process stack, client subprocesses, a tiny trace."""

import dataclasses
import json

import pytest
import pytest_asyncio

from services.bench import serve_report
from services.bench.latency_metrics import Slo
from services.bench.serve_clients import run_load
from services.bench.serve_config import ServeConfig
from services.bench.serve_prompts import FILLER_TEXT, ServeRequest, build_requests, fit_prompt
from services.bench.serve_run import run_serve
from services.bench.serve_sweep import run_closed_loop, run_rate, to_records
from services.bench.steady_state import SteadyStateWindow
from services.bench.workload import TraceRequest
from services.cli import main as cli_main
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.common.tokenizer import load_tokenizer
from services.engine import app as engine_app
from services.engine.config import EngineConfig
from services.gateway import app as gateway_app
from services.gateway.config import GatewayConfig
from services.memory import app as memory_app
from services.memory.config import MemoryConfig
from tests.shared_data import requires_shared_data

module_loop = pytest.mark.asyncio(loop_scope="module")


def make_config(**overrides) -> ServeConfig:
    fields = dict(
        gateway_address="127.0.0.1:1",
        engine_address=None,
        start_stack=False,
        policies=("test",),
        engine_args=(),
        with_predictor=False,
        with_memory=True,
        trace="alpaca",
        num_requests=6,
        seed=0,
        max_model_len=2048,
        length_divisor=8.0,
        max_prompt_tokens=16,
        max_output_tokens=6,
        rates_per_s=(2.0, float("inf")),
        burstiness=1.0,
        num_client_processes=2,
        num_unloaded_requests=2,
        bound_multiples=(2.0, 4.0),
        slo_ttft_s=None,
        slo_bound_multiple=4.0,
        max_send_lag_s=0.05,
        max_client_cpu_utilization=0.9,
        tokenizer="default",
        timeout_s=120.0,
        startup_timeout_s=120.0,
    )
    return ServeConfig(**{**fields, **overrides})


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway_address():
    memory = await memory_app.start(MemoryConfig(port=0, report_interval_s=0.5, stale_after_s=5.0))
    engine = await engine_app.start(
        EngineConfig(
            port=0,
            model=DUMMY_TINY_MODEL,
            dtype="float32",
            device="cpu",
            num_kv_blocks=128,
            max_num_seqs=8,
            memory_address=memory.address,
            engine_id="bench-serve",
            cpu_threads=1,
            drain_s=0.0,
        )
    )
    gateway = await gateway_app.start(GatewayConfig(engine_address=engine.address, port=0, drain_seconds=0.0))
    yield gateway.address
    for handle in (gateway, engine, memory):
        await handle.stop()


def synthetic_requests(num_requests: int, max_tokens: int = 5) -> list[ServeRequest]:
    tokenizer = load_tokenizer("default")
    return [ServeRequest(f"s{i}", fit_prompt(f"prompt {i}", 4 + i, tokenizer), max_tokens) for i in range(num_requests)]


@module_loop
async def test_client_processes_send_every_request_on_schedule(gateway_address):
    requests = synthetic_requests(6)
    arrivals = [0.0, 0.05, 0.1, 0.3, 0.3, 0.6]
    load = await run_load(requests, arrivals, gateway_address=gateway_address, num_processes=2, timeout_s=60.0, seed=1)
    assert sorted(r.request_id for r in load.results) == sorted(r.request_id for r in requests)
    assert all(r.error is None and r.num_output_tokens == 5 for r in load.results)
    by_id = {r.request_id: r for r in load.results}
    start = by_id["s0"].scheduled_s
    for request, arrival in zip(requests, arrivals):
        result = by_id[request.request_id]
        assert result.scheduled_s == pytest.approx(start + arrival, abs=1e-6)
        assert result.sent_s >= result.scheduled_s and result.sent_s <= result.first_token_s <= result.finish_s
        assert result.num_prompt_tokens == len(request.prompt_token_ids)
    assert load.health.num_processes == 2 and 0 <= load.health.p99_send_lag_s < 1.0
    assert len(to_records(load.results)) == 6


@module_loop
async def test_closed_loop_holds_concurrency_in_flight_and_measures_capacity(gateway_address):
    requests = synthetic_requests(24, max_tokens=4)
    load = await run_load(
        requests, [0.0] * 24, gateway_address=gateway_address, num_processes=2, timeout_s=60.0, seed=1, concurrency=3
    )
    assert sorted(r.request_id for r in load.results) == sorted(r.request_id for r in requests)
    assert all(r.error is None and r.num_output_tokens == 4 for r in load.results)
    events = sorted([(r.sent_s, 1) for r in load.results] + [(r.finish_s, -1) for r in load.results])
    in_flight = [sum(change for _, change in events[: index + 1]) for index in range(len(events))]
    assert max(in_flight) == 3  # never more than the concurrency, and it is reached
    sends = sorted(r.sent_s for r in load.results)
    assert sends[3] > min(r.finish_s for r in load.results) - 1e-3  # the 4th waits for a slot to free
    probe = await run_closed_loop(gateway_address, requests, "test", 3, make_config(gateway_address=gateway_address))
    assert probe.num_records == 24 and probe.num_failed == 0 and probe.concurrency == 3
    finishes = sorted(r.finish_s for r in load.results)
    assert 0 < probe.capacity_per_s and probe.output_token_throughput_per_s == pytest.approx(4 * probe.capacity_per_s)
    assert probe.capacity_per_s * probe.duration_s == pytest.approx(24, rel=0.6) and finishes[-1] > finishes[0]


@module_loop
async def test_failed_requests_are_counted_not_recorded(gateway_address):
    requests = synthetic_requests(2) + [ServeRequest("too-long", (1, 2, 3), 100_000)]  # beyond the context
    config = make_config(gateway_address=gateway_address, max_client_cpu_utilization=1e-9)
    run = await run_rate(gateway_address, requests, 50.0, config, Slo())
    assert run.num_failed == 1 and run.errors == {"INVALID_ARGUMENT": 1}
    assert run.summary.num_requests == 2 and run.point().num_failed == 1
    assert run.client_bottleneck  # a client CPU limit of ~0 flags every run


@module_loop
async def test_rate_point_leaves_warmup_and_drain_out_and_reports_slo_and_stability(gateway_address):
    requests = synthetic_requests(20)
    loose = make_config(gateway_address=gateway_address, slo_ttft_s=60.0, slo_tpot_s=10.0)
    run = await run_rate(gateway_address, requests, 8.0, loose, Slo())  # well below capacity even on a busy machine
    assert run.num_failed == 0 and run.steady.num_records == 20
    assert run.steady.num_measured == run.summary.num_requests == 16  # sends 2..17 of 20 (10% each end)
    assert run.steady.headline.slo_attainment == 1.0 and run.is_stable and not run.point().queue_growing
    strict = dataclasses.replace(loose, slo_ttft_s=1e-6)  # no first token comes back within 1 us
    run = await run_rate(gateway_address, requests, 20.0, strict, Slo())
    assert run.steady.headline.slo_attainment == 0.0
    whole = dataclasses.replace(loose, window=SteadyStateWindow(0.0, 0.0))
    assert (await run_rate(gateway_address, requests, 20.0, whole, Slo())).summary.num_requests == 20


def test_an_overloaded_rate_point_is_flagged_unstable_and_not_sustained():
    from services.bench.latency_metrics import RequestRecord
    from services.bench.serve_steady import steady_figures
    from services.bench.slo_metrics import SloBounds

    # one request per 0.1 s, served one at a time in 0.15 s each: the backlog grows all along
    records = [RequestRecord(f"r{i}", 0.1 * i, 0.15 * (i + 1) - 0.01, 0.15 * (i + 1), 4, 5) for i in range(200)]
    figures = steady_figures(records, SteadyStateWindow(), SloBounds())
    assert not figures.is_stable and figures.stability.shortfall_fraction > 0.2
    assert figures.num_measured == 160 and figures.headline.slo_attainment < 1.0
    keeping_up = [RequestRecord(f"r{i}", 0.1 * i, 0.1 * i + 0.02, 0.1 * i + 0.05, 4, 5) for i in range(200)]
    assert steady_figures(keeping_up, SteadyStateWindow(), SloBounds()).is_stable


@requires_shared_data
@module_loop
async def test_sweep_on_a_tiny_alpaca_trace(gateway_address, tmp_path):
    config = make_config(gateway_address=gateway_address)
    seen = []
    outcome = await run_serve(config, tmp_path, lambda policy, run: seen.append((policy, run.rate_per_s)))
    assert seen == [("test", 2.0), ("test", float("inf"))]
    (result,) = outcome.results
    assert outcome.reference_unloaded_s_per_token == result.unloaded_mean_s_per_token > 0
    unloaded = result.unloaded_mean_s_per_token
    assert outcome.bounds_s_per_token == pytest.approx((2 * unloaded, 4 * unloaded))
    for run in result.runs:
        assert run.num_failed == 0 and run.num_short == 0 and run.summary.num_requests == 6
    rows = serve_report.sustainable_table(outcome, config)
    assert [row["bound_multiple"] for row in rows] == [2.0, 4.0] and rows[0]["baseline"] == "test"
    figures = serve_report.figures(outcome, config, rows)
    assert figures["trace_stats"]["max_output_tokens"] <= 6 and "test" in figures["policies"]


def test_fit_prompt_is_exact_and_deterministic():
    tokenizer = load_tokenizer("default")
    short = fit_prompt("Hi", 9, tokenizer)
    assert len(short) == 10 and short[0] == tokenizer.bos_token_id
    filler = tokenizer.encode(FILLER_TEXT, add_bos=False)
    assert fit_prompt(None, 80, tokenizer)[1:] == tuple((filler * 10)[:80]) and len(filler) < 80
    long_text = "word " * 500
    assert fit_prompt(long_text, 7, tokenizer) == fit_prompt(long_text, 7, tokenizer)
    assert len(fit_prompt(long_text, 7, tokenizer)) == 8
    trace = [TraceRequest("a", "text", 10, 2040)]
    with pytest.raises(ValueError, match="exceed the model context"):
        build_requests(trace, tokenizer, max_context_tokens=2048)


def test_config_rejects_contradictions():
    with pytest.raises(ValueError, match="exactly one"):
        make_config(start_stack=True)
    with pytest.raises(ValueError, match="--start-stack"):
        make_config(policies=("fcfs", "alise"))
    with pytest.raises(ValueError, match="ascending"):
        make_config(rates_per_s=(4.0, 2.0))
    with pytest.raises(ValueError, match="--trace"):
        make_config(trace="nope")
    with pytest.raises(ValueError, match="--slo-tpot-ms"):
        make_config(slo_tpot_s=0.0)
    with pytest.raises(ValueError, match="not both"):
        make_config(load_fractions=(0.9, 1.0), closed_loop_concurrency=8)
    with pytest.raises(ValueError, match="needs --capacity-concurrency"):
        make_config(load_fractions=(0.9, 1.0), rates_per_s=())
    with pytest.raises(ValueError, match="ascending"):
        make_config(load_fractions=(1.0, 0.9), rates_per_s=(), closed_loop_concurrency=8)
    assert make_config(load_fractions=(0.9, 1.0), rates_per_s=(), closed_loop_concurrency=8).load_fractions
    assert make_config().attainment_slo.ttft_s == 1.0 and make_config(slo_ttft_s=2.0).attainment_slo.ttft_s == 2.0
    assert dataclasses.replace(make_config(), seed=3).seed == 3


@requires_shared_data
def test_cli_starts_a_stack_per_policy_interleaves_rates_and_saves_json_and_png(tmp_path, capsys):
    out = tmp_path / "serve.json"
    status = cli_main.main(
        [
            "bench",
            "serve",
            "--start-stack",
            "--policies",
            "fcfs,alise",
            "--no-predictor",
            "--trace",
            "alpaca",
            "--num-requests",
            "4",
            "--rates",
            "4",
            "8",
            "--num-unloaded",
            "1",
            "--max-output-tokens",
            "4",
            "--max-prompt-tokens",
            "8",
            "--engine-arg=--num-kv-blocks=64",
            "--engine-arg=--cpu-threads=1",
            "--model",
            DUMMY_TINY_MODEL,
            "--log-dir",
            str(tmp_path / "logs"),
            "--out",
            str(out),
        ]
    )
    assert status == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "serve" and report["config"]["policies"] == ["fcfs", "alise"]
    for policy in ("fcfs", "alise"):
        runs = report["policies"][policy]["runs"]
        assert [run["rate_per_s"] for run in runs] == [4.0, 8.0]
        assert all(run["summary"]["num_requests"] == 4 and run["num_failed"] == 0 for run in runs)
        assert (tmp_path / "logs" / policy / "engine.log").exists()
    printed = [
        line.split()[:2] for line in capsys.readouterr().out.splitlines() if line.startswith(("fcfs ", "alise "))
    ]
    assert printed == [["fcfs", "4.00"], ["alise", "4.00"], ["fcfs", "8.00"], ["alise", "8.00"]]  # turns at each rate
    assert out.with_suffix(".png").stat().st_size > 0


@requires_shared_data
def test_cli_probes_capacity_in_a_closed_loop_then_runs_at_fractions_of_it(tmp_path, capsys):
    out = tmp_path / "serve.json"
    flags = ["--start-stack", "--policies", "fcfs", "--no-predictor", "--trace", "alpaca", "--num-requests", "10"]
    flags += ["--capacity-concurrency", "3", "--load-fractions", "0.5", "1", "--num-unloaded", "1"]
    flags += ["--max-output-tokens", "4", "--max-prompt-tokens", "8", "--engine-arg=--cpu-threads=1"]
    assert cli_main.main(["bench", "serve", *flags, "--model", DUMMY_TINY_MODEL, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    capacity = report["capacity"]
    assert capacity["policy"] == "fcfs" and capacity["concurrency"] == 3 and capacity["num_records"] == 10
    assert report["rates_per_s"] == pytest.approx([0.5 * capacity["capacity_per_s"], capacity["capacity_per_s"]])
    runs = report["policies"]["fcfs"]["runs"]
    assert [run["rate_per_s"] for run in runs] == pytest.approx(report["rates_per_s"])
    assert "closed-loop capacity" in capsys.readouterr().err


def test_each_started_stack_gets_its_own_engine_port():
    from services.bench.serve_stack import stack_config
    from services.cli.stack_plan import build_stack_plan

    for policy in ("fcfs", "alise"):  # a fixed port would be shared silently (SO_REUSEPORT): policies mixed
        config = stack_config(policy, engine_args=(), with_predictor=True, startup_timeout_s=60.0)
        (engine,) = [spec for spec in build_stack_plan(config) if spec.name == "engine"]
        port = engine.argv[engine.argv.index("--port") + 1]
        assert port == "0" and f"--scheduler-policy={policy}" in engine.argv


def test_model_lengths_mode_sends_the_prompt_as_a_chat_message_until_eos():
    from services.bench.serve_prompts import build_chat_requests
    from services.bench.serve_worker import generate_request

    trace = [TraceRequest("a", "Tell me a long story about a dragon " * 20, 12, 300)]
    requests = build_chat_requests(trace, load_tokenizer("smollm2-135m-instruct"), max_output_tokens=64)
    assert len(requests[0].prompt_token_ids) == 12 and requests[0].max_tokens == 64
    message = generate_request({**requests[0].job(7), "arrival_s": 0.0})
    assert not message.prompt_token_ids and not message.sampling.ignore_eos and message.sampling.max_tokens == 64
    assert message.messages[0].content == requests[0].chat_text and requests[0].chat_text.startswith("Tell me")
    with pytest.raises(ValueError, match="no chat template"):
        build_chat_requests(trace, load_tokenizer("default"), max_output_tokens=64)


@requires_shared_data
def test_policies_at_once_are_probed_and_run_side_by_side(tmp_path, capsys):
    out = tmp_path / "serve.json"
    flags = ["--start-stack", "--policies", "fcfs,alise", "--policy-turns", "at-once", "--no-predictor"]
    flags += ["--trace", "alpaca", "--num-requests", "10", "--capacity-concurrency", "3", "--load-fractions", "0.5"]
    flags += ["--num-unloaded", "1", "--max-output-tokens", "4", "--max-prompt-tokens", "8"]
    flags += ["--engine-arg=--cpu-threads=1"]
    assert cli_main.main(["bench", "serve", *flags, "--model", DUMMY_TINY_MODEL, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["policy_turns"] == "at-once" and report["capacity"]["policy"] == "fcfs"
    probed = [line.split(":")[0] for line in capsys.readouterr().err.splitlines() if "closed-loop capacity" in line]
    assert sorted(probed) == ["alise", "fcfs"]  # both stacks under load during the probe
    (fcfs,), (alise,) = (report["policies"][policy]["runs"] for policy in ("fcfs", "alise"))
    assert fcfs["rate_per_s"] == alise["rate_per_s"] == pytest.approx(report["rates_per_s"][0])
    assert fcfs["num_failed"] == alise["num_failed"] == 0
    overlap_s = min(fcfs["span_s"][1], alise["span_s"][1]) - max(fcfs["span_s"][0], alise["span_s"][0])
    assert overlap_s > 0.5 * (fcfs["span_s"][1] - fcfs["span_s"][0])  # they ran at the same time


def test_a_load_worker_dies_with_the_bench_that_started_it(tmp_path):
    """A bench killed without its cleanup (SIGKILL) must not leave load workers behind: the worker asks for
    SIGTERM on its parent's death. Here it waits to connect to a gateway that never comes (up to its
    connect timeout) when the bench dies."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "worker.pid"
    bench = (
        "import json, subprocess, sys, time\n"
        "worker = subprocess.Popen([sys.executable, '-m', 'services.bench.serve_worker'], stdin=subprocess.PIPE)\n"
        "job = {'gateway_address': '127.0.0.1:9', 'timeout_s': 5.0, 'requests': []}\n"
        "worker.stdin.write((json.dumps(job) + '\\n').encode()); worker.stdin.flush()\n"
        f"open({str(pid_file)!r}, 'w').write(str(worker.pid))\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", bench])
    deadline_s = time.monotonic() + 20.0
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline_s and parent.poll() is None, "the bench did not start its worker"
        time.sleep(0.05)
    worker_pid = int(pid_file.read_text())
    time.sleep(1.0)  # the worker is past its start, waiting to connect
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline_s = time.monotonic() + 5.0
    while time.monotonic() < deadline_s:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(worker_pid, signal.SIGKILL)
    pytest.fail("the load worker outlived its bench")
