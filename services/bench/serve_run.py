"""`alise bench serve` end to end: trace -> stacks -> interleaved rate sweep -> results.

    trace = scale_trace(load_trace(...))              identical requests for every policy
    gateways = the running one | one fresh local stack per policy (--start-stack), all up at once
    warm-up request and unloaded latency (sequential requests) of each policy, one after another
    with --capacity-concurrency N: a closed-loop probe of the FIRST policy (N in the system over the
        whole trace) measures its capacity C; with --load-fractions the rates are those fractions of C
    for each rate: every policy's run at that rate, one after another (or all at once: --policy-turns at-once,
        where the probe above also runs every policy at once)
    bounds and the goodput SLO come from the FIRST policy's unloaded latency, pinned before any
    sweep runs, so every policy is judged against the same numbers.

Policies take turns at each rate instead of each running its whole sweep in turn: on a shared
machine the load of other jobs drifts over minutes, and a drift between two policies' sweeps
would read as a difference between the policies. An idle stack waits on its sockets, so the
stacks that are not being measured cost next to nothing. Turns still leave minutes between two
policies' runs of one rate (a 4,000-request point lasts ~5 min), and on a 2-core machine shared with
other jobs the load moved from 8 to 23 within one run; --policy-turns at-once runs them side by side
(a paired comparison: every stack gets the same requests at the same times and the same drift), and
measures the capacity the same way, since the stacks then share the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import pathlib
import sys
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import grpc

from services.bench.latency_metrics import Slo
from services.bench.serve_config import RUNNING_STACK_LABEL, OutputLengths, PolicyTurns, ServeConfig
from services.bench.serve_prompts import ServeRequest, build_chat_requests, build_requests
from services.bench.serve_stack import StackStartError, local_stack, stack_config
from services.bench.serve_sweep import CapacityProbe, RateRun, measure_unloaded, run_closed_loop, run_rate
from services.bench.sustainable_rate import latency_bounds
from services.bench.workload import TraceRequest, load_trace, scale_trace
from services.common.contracts import (
    engine_service_pb2,
    engine_service_pb2_grpc,
    gateway_service_pb2,
    gateway_service_pb2_grpc,
)
from services.common.server import GRPC_OPTIONS


@dataclass(frozen=True)
class PolicyResult:
    """Everything measured for one policy."""

    policy: str  # engine --scheduler-policy (or the label of a running stack)
    unloaded_mean_s_per_token: float  # mean normalized latency of sequential requests, s/token (nan: failed)
    runs: list[RateRun]  # one per swept rate, ascending (empty when the stack failed)
    error: str | None = None  # why this policy's stack could not be measured (e.g. an unknown policy)


@dataclass(frozen=True)
class ServeOutcome:
    """The whole run: shared judging settings and each policy's results."""

    trace: list[TraceRequest]  # the scaled trace every policy served
    reference_unloaded_s_per_token: float  # the first policy's unloaded mean: bounds derive from it
    bounds_s_per_token: tuple[float, ...]  # one per config.bound_multiples
    slo: Slo  # goodput SLO
    results: list[PolicyResult]  # in config.policies order
    rates_per_s: tuple[float, ...] = ()  # the rates swept (--rates, or --load-fractions x the probe's capacity)
    capacity: CapacityProbe | None = None  # the first policy's closed-loop probe, when one ran


def scaled_trace(config: ServeConfig) -> list[TraceRequest]:
    trace = load_trace(
        config.trace, num_requests=config.num_requests, seed=config.seed, max_model_len=config.max_model_len
    )
    return scale_trace(
        trace,
        divisor=config.length_divisor,
        max_prompt_tokens=config.max_prompt_tokens,
        max_output_tokens=config.max_output_tokens,
    )


@contextlib.asynccontextmanager
async def gateway_for(policy: str, config: ServeConfig, log_dir: pathlib.Path) -> AsyncIterator[str]:
    """The running gateway, or a fresh local stack running `policy` (stopped on exit)."""
    if not config.start_stack:
        assert config.gateway_address is not None
        yield config.gateway_address
        return
    up_config = stack_config(
        policy,
        engine_args=config.engine_args,
        with_predictor=config.with_predictor,
        with_memory=config.with_memory,
        startup_timeout_s=config.startup_timeout_s,
        model=config.model,
    )
    async with local_stack(up_config, log_dir / policy) as address:
        yield address


async def running_policy_label(config: ServeConfig) -> str:
    """The running engine's policy name when --engine-address is given, else a neutral label."""
    if config.engine_address is None:
        return config.policies[0]
    async with grpc.aio.insecure_channel(config.engine_address, options=GRPC_OPTIONS) as channel:
        stub = engine_service_pb2_grpc.EngineServiceStub(channel)
        stats = await stub.GetStats(engine_service_pb2.EngineServiceGetStatsRequest(), timeout=config.timeout_s)
    return stats.scheduler_policy or RUNNING_STACK_LABEL


async def requests_for(gateway_address: str, trace: list[TraceRequest], config: ServeConfig) -> list[ServeRequest]:
    """The trace as this gateway's model takes it (tokenizer checked against the served vocabulary)."""
    from services.common.tokenizer import load_tokenizer

    async with grpc.aio.insecure_channel(gateway_address, options=GRPC_OPTIONS) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        info = await stub.GetModelInfo(gateway_service_pb2.GetModelInfoRequest(), timeout=config.timeout_s)
    spec = config.tokenizer or info.tokenizer
    tokenizer = load_tokenizer(spec)
    if tokenizer.vocab_size != info.vocab_size:
        raise ValueError(
            f"--tokenizer {spec!r} has {tokenizer.vocab_size} tokens but the served model "
            f"{info.model_name!r} has {info.vocab_size}: pass the served model's tokenizer"
        )
    if config.output_lengths is OutputLengths.MODEL:
        return build_chat_requests(trace, tokenizer, max_output_tokens=config.max_output_tokens)
    return build_requests(trace, tokenizer, max_context_tokens=info.max_context_tokens)


async def run_serve(config: ServeConfig, log_dir: pathlib.Path, on_run: Callable[[str, RateRun], None]) -> ServeOutcome:
    """Measures every policy, interleaved by rate; on_run(policy, run) sees each rate point as it completes."""
    trace = scaled_trace(config)
    policies = config.policies if config.start_stack else (await running_policy_label(config),)
    async with contextlib.AsyncExitStack() as stacks:
        addresses, errors = await _start_gateways(policies, config, log_dir, stacks)
        if not addresses:
            raise RuntimeError("no policy could be measured: " + "; ".join(f"{p}: {e}" for p, e in errors.items()))
        requests = await requests_for(next(iter(addresses.values())), trace, config)
        unloaded = {}
        for policy, address in addresses.items():
            await measure_unloaded(address, requests[:1], config)  # warm-up, not recorded
            unloaded[policy] = await measure_unloaded(address, requests[: config.num_unloaded_requests], config)
            print(f"{policy}: unloaded mean normalized latency {unloaded[policy] * 1e3:.2f} ms/token", file=sys.stderr)
        reference = next(iter(unloaded.values()))
        slo = Slo(config.slo_ttft_s, reference * config.slo_bound_multiple)
        capacity = await _probe_capacity(addresses, requests, config)
        rates = config.rates_per_s
        if config.load_fractions and capacity is not None:  # _check_rates: fractions come with a probe
            rates = tuple(fraction * capacity.capacity_per_s for fraction in config.load_fractions)
            print(f"rates from the probe: {', '.join(f'{r:.3f}' for r in rates)} req/s", file=sys.stderr)
        runs: dict[str, list[RateRun]] = {policy: [] for policy in addresses}
        for rate_per_s in rates:
            async for policy, run in _runs_at_rate(addresses, requests, rate_per_s, config, slo):
                runs[policy].append(run)
                on_run(policy, run)
    results = [
        PolicyResult(policy, math.nan, [], errors[policy])
        if policy in errors
        else PolicyResult(policy, unloaded[policy], runs[policy])
        for policy in policies
    ]
    bounds = latency_bounds(reference, config.bound_multiples)
    return ServeOutcome(trace, reference, bounds, slo, results, rates, capacity)


async def _runs_at_rate(
    addresses: dict[str, str], requests: list[ServeRequest], rate_per_s: float, config: ServeConfig, slo: Slo
) -> AsyncIterator[tuple[str, RateRun]]:
    """Every policy's run at `rate_per_s`, one after another or all at once (config.policy_turns)."""
    if config.policy_turns is PolicyTurns.AT_ONCE:
        at_once = (run_rate(address, requests, rate_per_s, config, slo) for address in addresses.values())
        for policy, run in zip(addresses, await asyncio.gather(*at_once)):
            yield policy, run
        return
    for policy, address in addresses.items():
        yield policy, await run_rate(address, requests, rate_per_s, config, slo)


async def _probe_capacity(
    addresses: dict[str, str], requests: list[ServeRequest], config: ServeConfig
) -> CapacityProbe | None:
    """The first policy's closed-loop capacity (None without --capacity-concurrency); RuntimeError when
    it cannot be measured, since rates derived from it would mean nothing. With policies at once, every
    policy is probed at the same time (each printed), since that is how they will share the machine."""
    if config.closed_loop_concurrency is None:
        return None
    probed = addresses if config.policy_turns is PolicyTurns.AT_ONCE else dict([next(iter(addresses.items()))])
    concurrency = config.closed_loop_concurrency
    try:
        probes = await asyncio.gather(
            *(run_closed_loop(address, requests, policy, concurrency, config) for policy, address in probed.items())
        )
    except ValueError as error:
        raise RuntimeError(f"capacity probe failed: {error}") from None
    for probe in probes:
        print(
            f"{probe.policy}: closed-loop capacity {probe.capacity_per_s:.3f} req/s "
            f"({probe.output_token_throughput_per_s:.1f} tok/s), {probe.concurrency} in system, "
            f"{probe.num_records} finished, {probe.num_failed} failed, {probe.duration_s:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return probes[0]


async def _start_gateways(
    policies: tuple[str, ...], config: ServeConfig, log_dir: pathlib.Path, stacks: contextlib.AsyncExitStack
) -> tuple[dict[str, str], dict[str, str]]:
    """Each policy's gateway address (in policy order), and why a policy's stack could not start:
    one policy that cannot start must not cost the others' results."""
    addresses, errors = {}, {}
    for policy in policies:
        try:
            addresses[policy] = await stacks.enter_async_context(gateway_for(policy, config, log_dir))
        except StackStartError as error:
            print(f"{policy}: skipped: {error}", file=sys.stderr)
            errors[policy] = str(error)
    return addresses, errors
