"""Fingerprint of the scheduler's decisions: sha256 of the simulator's per-request results.

Every policy, on a fixed synthetic trace (lognormal outputs, uniform prompts) and fixed seeds, in three
engine shapes: the default, a small batch with a token budget and max-wait promotion (preemption
pressure), and the default with a 4 GB KV pool (KV shortage: victims, readmission). A refactor of scheduling code must leave the printed fingerprint unchanged; a change meant
to alter decisions changes it, and its commit says so (old -> new).

    python scripts/sim_fingerprint.py [num_requests]      # default 250; alise installed (scripts/install.sh)
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys

import numpy as np

from services.bench.arrivals import arrival_times_s
from services.bench.sim.gpu_presets import GB, PRESETS
from services.bench.sim.predictions import noisy_oracle_distributions
from services.bench.sim.simulator import EngineShape, simulate
from services.bench.workload import TraceRequest
from services.engine.scheduler import POLICY_NAMES

COST = PRESETS["llama2-13b-a100-40g"]
KV_SCARCE_COST = dataclasses.replace(COST, kv_cache_bytes_override=4 * GB)
# (arrivals per s, engine shape, step cost)
CASES = (
    (3.0, EngineShape(), COST),
    (6.0, EngineShape(max_num_seqs=64, max_num_batched_tokens=512, max_wait_s=5.0), COST),
    (3.0, EngineShape(), KV_SCARCE_COST),
)


def synthetic_trace(num_requests: int, seed: int = 0) -> list[TraceRequest]:
    rng = np.random.default_rng(seed)
    prompts = rng.integers(8, 3000, num_requests)
    outputs = np.clip(rng.lognormal(np.log(120), 1.0, num_requests), 4, 1200).astype(int)
    return [TraceRequest(f"r{i}", None, int(p), int(o)) for i, (p, o) in enumerate(zip(prompts, outputs, strict=True))]


def main(num_requests: int) -> str:
    digest = hashlib.sha256()
    trace = synthetic_trace(num_requests)
    predictions, _ = noisy_oracle_distributions([r.num_output_tokens for r in trace], target_tau=0.6, seed=0)
    for policy in POLICY_NAMES:
        for rate, shape, cost in CASES:
            arrivals = arrival_times_s(len(trace), rate, seed=0)
            result = simulate(trace, arrivals, predictions, policy=policy, cost=cost, shape=shape)
            fields = (policy, rate, result.records, result.num_steps, result.num_preemptions)
            fields += (result.num_recomputed_tokens, result.max_wait_s, result.busy_s)
            digest.update(repr(fields).encode())
            print(policy, rate, result.num_steps, result.num_preemptions, len(result.records), flush=True)
    return digest.hexdigest()


if __name__ == "__main__":
    print("fingerprint", main(int(sys.argv[1]) if len(sys.argv) > 1 else 250))
