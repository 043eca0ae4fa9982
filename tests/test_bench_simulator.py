"""The discrete-event simulator: deterministic, and at very low load every policy is the same."""

import numpy as np
import pytest

from services.bench.arrivals import arrival_times_s
from services.bench.sim.gpu_presets import PRESETS
from services.bench.sim.predictions import noisy_oracle_distributions
from services.bench.sim.simulator import EngineShape, simulate
from services.bench.workload import TraceRequest
from services.engine.scheduler import POLICY_NAMES

COST = PRESETS["llama2-13b-a100-40g"]  # a small KV pool: preemption happens under load


def _trace(num_requests: int, seed: int = 0) -> list[TraceRequest]:
    rng = np.random.default_rng(seed)
    prompts = rng.integers(8, 400, num_requests)
    outputs = np.clip(rng.lognormal(np.log(120), 1.0, num_requests), 4, 1200).astype(int)
    return [TraceRequest(f"r{i}", None, int(p), int(o)) for i, (p, o) in enumerate(zip(prompts, outputs))]


def _run(policy: str, rate: float, trace, seed: int = 0):
    predictions, _ = noisy_oracle_distributions([t.num_output_tokens for t in trace], target_tau=0.6, seed=seed)
    arrivals = arrival_times_s(len(trace), rate, seed=seed)
    return simulate(trace, arrivals, predictions, policy=policy, cost=COST, shape=EngineShape())


def test_the_same_seed_gives_the_same_run():
    trace = _trace(120)
    first, second = _run("alise", 3.0, trace), _run("alise", 3.0, trace)
    assert first.records == second.records
    assert (first.num_steps, first.num_preemptions) == (second.num_steps, second.num_preemptions)


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_request_finishes_with_its_true_length(policy):
    trace = _trace(80)
    result = _run(policy, 3.0, trace)
    assert sorted(r.request_id for r in result.records) == sorted(t.request_id for t in trace)
    lengths = {t.request_id: t.num_output_tokens for t in trace}
    assert all(r.num_output_tokens == lengths[r.request_id] for r in result.records)


def test_at_very_low_load_all_policies_give_the_same_latencies():
    trace = _trace(40)
    latencies = {
        policy: {r.request_id: r.finish_s - r.arrival_s for r in _run(policy, 0.001, trace).records}
        for policy in POLICY_NAMES
    }
    for policy in POLICY_NAMES:
        assert latencies[policy] == pytest.approx(latencies["fcfs"])


def test_under_load_shortest_first_beats_fcfs_on_mean_normalized_latency():
    trace = _trace(300)

    def mean_normalized(policy):
        records = _run(policy, 3.0, trace).records
        return sum(r.normalized_latency_s_per_token for r in records) / len(records)

    assert mean_normalized("srpt-oracle") < mean_normalized("fcfs")
    assert mean_normalized("alise") < mean_normalized("fcfs")
