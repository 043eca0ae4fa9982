"""`alise bench scheduler`: time per scheduling step with many running and waiting requests.

The scheduler runs on the engine thread between model steps, so its time is pure overhead. The
goal: <= 0.5 ms per step with 256 running and 1,000 waiting requests. Work is synthetic but shaped
like ShareGPT (prompt 16-256 tokens, log-normal output around 200 tokens), with noisy-oracle
predictions (tau 0.6); the waiting queue is topped up to its size before every step, finished
requests are replaced, and each policy gets the identical request stream. Timed: `schedule()` and
`update()` (fake sampled tokens), separately, in thread CPU time (thread_time_ns: on a shared machine
wall time also counts the time other processes held the core) and, for reference, wall time.
"""

from __future__ import annotations

import argparse
import pathlib
import time
from dataclasses import dataclass

import numpy as np

from services.bench.results import build_report, write_report
from services.bench.sim.predictions import noisy_oracle_distributions
from services.bench.sim.sim_request import make_sim_request
from services.common import arg_types
from services.common.cli_errors import print_error
from services.engine.block_pool import KvBlockManager
from services.engine.scheduler import POLICY_NAMES, OnlineStepCostModel, Scheduler, SchedulerLimits, make_policy

VIRTUAL_STEP_S = 0.02  # the virtual clock advances this much per step (only starvation reads it)


@dataclass(frozen=True)
class OverheadConfig:
    """One `alise bench scheduler` run."""

    num_running: int  # target running batch (= max_num_seqs)
    num_waiting: int  # waiting requests kept queued before every step
    num_steps: int  # measured steps per policy
    num_warmup_steps: int  # unmeasured steps first (fills the batch)
    max_num_batched_tokens: int  # token budget per step
    policies: tuple[str, ...]
    seed: int


@dataclass(frozen=True)
class OverheadFigures:
    policy: str
    schedule_mean_ms: float
    schedule_p50_ms: float
    schedule_p99_ms: float
    schedule_wall_p50_ms: float  # wall clock, inflated when the machine is shared
    update_mean_ms: float
    mean_num_running: float  # over measured steps
    mean_num_waiting: float
    num_preemptions: int


class _RequestStream:
    """Deterministic synthetic requests, identical for every policy."""

    def __init__(self, seed: int, size: int) -> None:
        rng = np.random.default_rng(seed)
        self.prompts = rng.integers(16, 257, size)
        self.outputs = np.clip(rng.lognormal(np.log(200), 0.8, size), 8, 1024).astype(int)
        self.predictions, _ = noisy_oracle_distributions(self.outputs.tolist(), target_tau=0.6, seed=seed)
        self.next = 0

    def take(self, now_s: float):
        i = self.next % len(self.prompts)
        self.next += 1
        return make_sim_request(
            f"r{self.next}",
            num_prompt_tokens=int(self.prompts[i]),
            num_output_tokens=int(self.outputs[i]),
            arrival_time_s=now_s,
            prediction=self.predictions[i],
            reveal_length=True,
        )


def measure_policy(config: OverheadConfig, policy_name: str) -> OverheadFigures:
    clock = [0.0]
    cost_model = OnlineStepCostModel()
    limits = SchedulerLimits(config.num_running, config.max_num_batched_tokens, 4096)
    kv = KvBlockManager(config.num_running * 96, 16)  # ample: 1,536 tokens of KV per running request
    scheduler = Scheduler(make_policy(policy_name, cost_model), limits, kv, None, lambda: clock[0], cost_model)
    stream = _RequestStream(config.seed, 8192)
    schedule_ns, schedule_wall_ns, update_ns, running, waiting = [], [], [], [], []
    for step in range(config.num_warmup_steps + config.num_steps):
        while len(scheduler.waiting) < config.num_waiting:
            scheduler.add(stream.take(clock[0]))
        started, started_wall = time.thread_time_ns(), time.perf_counter_ns()
        output = scheduler.schedule()
        scheduled, scheduled_wall = time.thread_time_ns(), time.perf_counter_ns()
        sampled = {c.request.request_id: 7 for c in output.chunks if c.samples_token}
        scheduler.update(output, sampled)
        updated = time.thread_time_ns()
        scheduler.record_step_time(output, VIRTUAL_STEP_S)
        clock[0] += VIRTUAL_STEP_S
        if step >= config.num_warmup_steps:
            schedule_ns.append(scheduled - started)
            schedule_wall_ns.append(scheduled_wall - started_wall)
            update_ns.append(updated - scheduled)
            running.append(len(scheduler.running))
            waiting.append(len(scheduler.waiting))
    schedule_ms = np.asarray(schedule_ns) / 1e6
    return OverheadFigures(
        policy=policy_name,
        schedule_mean_ms=float(schedule_ms.mean()),
        schedule_p50_ms=float(np.percentile(schedule_ms, 50)),
        schedule_p99_ms=float(np.percentile(schedule_ms, 99)),
        schedule_wall_p50_ms=float(np.percentile(schedule_wall_ns, 50) / 1e6),
        update_mean_ms=float(np.mean(update_ns) / 1e6),
        mean_num_running=float(np.mean(running)),
        mean_num_waiting=float(np.mean(waiting)),
        num_preemptions=scheduler.num_preemptions,
    )


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("scheduler", help="time per scheduling step (256 running, 1,000 waiting)")
    parser.add_argument("--num-running", type=arg_types.positive_int, default=256)
    parser.add_argument("--num-waiting", type=arg_types.positive_int, default=1000)
    parser.add_argument("--num-steps", type=arg_types.positive_int, default=2000)
    parser.add_argument("--num-warmup-steps", type=arg_types.non_negative_int, default=200)
    parser.add_argument("--max-num-batched-tokens", type=arg_types.positive_int, default=512)
    parser.add_argument("--policies", default=",".join(POLICY_NAMES), help="comma-separated")
    parser.add_argument("--seed", type=arg_types.seed, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/bench_scheduler.json"))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    policies = arg_types.comma_list(args.policies, str)
    unknown = sorted(set(policies) - set(POLICY_NAMES))
    if unknown:
        print_error("alise bench scheduler", f"unknown policies {unknown}; known: {list(POLICY_NAMES)}")
        return 2
    config = OverheadConfig(
        args.num_running,
        args.num_waiting,
        args.num_steps,
        args.num_warmup_steps,
        args.max_num_batched_tokens,
        policies,
        args.seed,
    )
    print("schedule() and update() per step, thread CPU ms (wall p50 for reference)")
    print(
        f"{'policy':<12} {'schedule mean':>14} {'p50':>8} {'p99':>8} {'wall p50':>9} {'update':>8} {'running':>8} {'waiting':>8} {'preempt':>8}"
    )
    figures = []
    for name in policies:
        result = measure_policy(config, name)
        figures.append(result)
        print(
            f"{name:<12} {result.schedule_mean_ms:>11.3f} ms {result.schedule_p50_ms:>8.3f} {result.schedule_p99_ms:>8.3f}"
            f" {result.schedule_wall_p50_ms:>9.3f} {result.update_mean_ms:>8.3f} {result.mean_num_running:>8.1f} {result.mean_num_waiting:>8.1f}"
            f" {result.num_preemptions:>8d}"
        )
    path = write_report(args.out, build_report("scheduler_overhead", config, {"policies": figures, "goal_ms": 0.5}))
    print(f"saved {path}")
    return 0
