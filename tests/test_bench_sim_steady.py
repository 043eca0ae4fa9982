"""The steady-state method of `alise bench sim`: closed loop, the sweep's figures, JSON and PNG, flags."""

import argparse
import json

import numpy as np
import pytest

from services.bench.latency_metrics import in_system_counts
from services.bench.results import build_report
from services.bench.sim import cli as sim_cli
from services.bench.sim.gpu_presets import PRESETS
from services.bench.sim.predictions import noisy_oracle_distributions
from services.bench.sim.simulator import EngineShape, simulate
from services.bench.sim.steady_report import plot_steady, table_lines
from services.bench.sim.steady_sweep import GAMMA_CV2, POISSON, SteadyConfig, run_steady
from services.bench.workload import TraceRequest
from tests.shared_data import requires_shared_data

COST = PRESETS["llama2-13b-a100-40g"]  # a small KV pool: preemption happens under load


def _workload(seed: int, num_requests: int = 160):
    rng = np.random.default_rng(seed)
    prompts = rng.integers(8, 300, num_requests)
    outputs = np.clip(rng.lognormal(np.log(100), 1.0, num_requests), 4, 800).astype(int)
    trace = [TraceRequest(f"r{i}", None, int(p), int(o)) for i, (p, o) in enumerate(zip(prompts, outputs, strict=True))]
    predictions, _ = noisy_oracle_distributions([t.num_output_tokens for t in trace], target_tau=0.6, seed=seed)
    return trace, predictions


def test_closed_loop_keeps_n_requests_in_the_system():
    trace, predictions = _workload(0)
    result = simulate(
        trace,
        [0.0] * len(trace),
        predictions,
        policy="fcfs",
        cost=COST,
        shape=EngineShape(),
        closed_loop_concurrency=12,
    )
    assert len(result.records) == len(trace)
    finishes = np.sort([r.finish_s for r in result.records])
    # Between the first finish and the time the trace runs out, exactly 12 are in the system.
    last_entry_s = max(r.arrival_s for r in result.records)
    times = finishes[(finishes > finishes[0]) & (finishes < last_entry_s)] + 1e-9
    assert len(times) > 50
    assert set(in_system_counts(result.records, times).tolist()) == {12}


def test_closed_loop_leaves_open_loop_runs_alone():
    trace, predictions = _workload(1)
    arrivals = [0.5 * i for i in range(len(trace))]
    first = simulate(trace, arrivals, predictions, policy="alise", cost=COST, shape=EngineShape())
    assert [r.arrival_s for r in sorted(first.records, key=lambda r: r.request_id[1:].zfill(5))] == arrivals


def test_steady_sweep_figures_json_and_png(tmp_path):
    config = SteadyConfig(
        ("fcfs", "alise", "srpt-oracle"), (0.8, 1.0), (POISSON, GAMMA_CV2), (0, 1), capacity_concurrency=16
    )
    result = run_steady(_workload, cost=COST, shape=EngineShape(), config=config, progress=lambda _: None)
    assert set(result.capacity_per_s) == {"fcfs", "alise", "srpt-oracle"}
    assert all(estimate.mean > 0 for estimate in result.capacity_per_s.values())
    assert len(result.runs) == 3 * 2 * 2 * 2 and len(result.points) == 3 * 2 * 2
    fcfs_rate = result.capacity_per_s["fcfs"].mean
    assert {round(p.rate_per_s / fcfs_rate, 6) for p in result.points} == {0.8, 1.0}
    assert set(result.goodput_load) == {"poisson", "gamma-cv2"}
    assert set(result.oracle_share["poisson"]) == {"0.8", "1"}
    text = "\n".join(table_lines(result, config))
    assert "goodput" in text and "srpt-oracle" in text
    report = json.loads(json.dumps(build_report("simulator-steady-state", {"steady": config}, {"result": result})))
    assert report["result"]["points"][0]["figures"]["p99_ttft_s"]["num_samples"] == 2
    assert plot_steady(result, config, title="t", path=tmp_path / "s.png").stat().st_size > 10_000


def test_steady_config_needs_fcfs_or_its_capacity():
    with pytest.raises(ValueError, match="fcfs"):
        SteadyConfig(("alise",))
    config = SteadyConfig(("alise",), (1.0,), (POISSON,), (0,), base_capacity_per_s=0.5)
    result = run_steady(_workload, cost=COST, shape=EngineShape(), config=config, progress=lambda _: None)
    assert result.capacity_per_s == {} and [p.rate_per_s for p in result.points] == [0.5]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--arrivals", "poisson,lumpy"], "unknown arrivals ['lumpy']"),
        (["--policies", "alise"], "needs fcfs"),
        (["--kv-offload", "recompute,swap"], "one --kv-offload mode"),
    ],
)
def test_cli_refuses_bad_steady_state_flags(capsys, flags, message):
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sim", *flags])
    assert args.handler(args) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_length_divisor_on_the_heldout_trace(capsys):
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sim", "--trace", "smollm2-heldout", "--length-divisor", "8"])
    assert args.handler(args) == 2
    assert "apply to the dataset traces" in capsys.readouterr().err


@requires_shared_data
def test_the_length_divisor_gives_the_cpu_stacks_shape():
    from services.bench.sim import cli_inputs

    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    flags = ["sim", "--num-requests", "200", "--length-divisor", "8", "--max-prompt-tokens", "64"]
    args = parser.parse_args([*flags, "--max-output-tokens", "64"])
    scaled, _, _ = cli_inputs.workload(args, 0)
    full, _, _ = cli_inputs.workload(parser.parse_args(["sim", "--num-requests", "200"]), 0)
    assert [t.request_id for t in scaled] == [t.request_id for t in full]
    for small, big in zip(scaled, full, strict=True):
        assert small.num_prompt_tokens == min(64, -(-big.num_prompt_tokens // 8))
        assert small.num_output_tokens == min(64, -(-big.num_output_tokens // 8))
