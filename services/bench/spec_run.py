"""One measured group of `alise bench spec`: b requests admitted together into one engine, stepped to the end.

What is timed (time.perf_counter around each `EngineCore.step()` call, nothing else):

    step:   1 .. p            some prompt of the group still has tokens to prefill    (not timed as decode)
            p+1 .. end        every prompt is in the KV cache: decode (and verify)    decode_s, decode tokens

    decode tokens/s = output tokens emitted by steps p+1 .. end / their summed wall time
    decode tokens per CPU s = the same tokens / the engine thread's CPU time in those steps
                      (time.thread_time; with 1 torch thread every operator runs in this thread, so this
                      leaves out the time other processes on a shared machine took the core away)
    TPOT of a request = (time its last token was emitted - time its first was) / (output tokens - 1),
                        times read at the end of the emitting step (a verify emits several tokens at once)
                        on its engine's own clock (the summed wall time of the group's steps so far)

    group tokens per CPU s = every output token of the group / the thread CPU time of all its steps, prefill
                      included (group_cpu_s): what the closed group costs. The decode window alone
                      undercounts a method that emits tokens while later prompts still prefill: at batch 16
                      (512-token budget, ~10 prefill steps) n-gram emitted 287 of its 768 summarise tokens
                      there against off's 104, and both then needed the same 46-47 steps for the request
                      prefilled last, so its decode window read 0.76x on steps no dearer than off's
                      (services/bench/spec_step_profile.py, docs/benchmarks/spec/README.md).

A step's wall time includes what speculation adds around the model: n-gram drafting on the host
(Speculator.plan), early-exit drafting inside the runner, verification and rollback.

run_groups runs one group in several engines at once, one step of each in turn, so that the load of a shared
machine hits every method's steps alike (groups run one after another drifted by +-15% per step at batch 16);
each engine's TPOT is then read on its own clock (the summed wall time of its own steps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TypeVar

from services.bench.spec_prompts import SpecPrompt
from services.engine.engine_core import EngineCore
from services.engine.request import Request, SamplingOptions

K = TypeVar("K")


@dataclass(frozen=True)
class SpecCounters:
    """The speculator's cumulative counters (all 0 with speculation off)."""

    num_draft_tokens: int  # drafts verified
    num_accepted_tokens: int  # drafts accepted
    num_verifies: int  # (request, step) verifies with at least one draft

    def minus(self, earlier: SpecCounters) -> SpecCounters:
        return SpecCounters(
            self.num_draft_tokens - earlier.num_draft_tokens,
            self.num_accepted_tokens - earlier.num_accepted_tokens,
            self.num_verifies - earlier.num_verifies,
        )


@dataclass(frozen=True)
class GroupRun:
    """One group's figures (one method, one batch of prompts)."""

    outputs: dict[str, tuple[int, ...]]  # prompt id -> greedy output token ids
    num_steps: int  # every step of the group, prefill included
    num_decode_steps: int  # steps after every prompt was prefilled
    num_decode_tokens: int  # output tokens those steps emitted
    decode_s: float  # their summed wall time
    decode_cpu_s: float  # their summed thread CPU time
    tpot_s: tuple[float, ...]  # per request with >= 2 output tokens
    spec: SpecCounters  # this group's drafts, accepted drafts and verifies
    group_s: float = 0.0  # the summed wall time of every step, prefill included
    group_cpu_s: float = 0.0  # the same on thread CPU time


def spec_counters(core: EngineCore) -> SpecCounters:
    speculator = core.speculator
    if speculator is None:
        return SpecCounters(0, 0, 0)
    stats = speculator.stats.snapshot()
    return SpecCounters(stats.num_draft_tokens, stats.num_accepted_tokens, stats.num_request_verifies)


def greedy_options(max_tokens: int) -> SamplingOptions:
    """Greedy, stopping at EOS (greedy outputs are identical across methods, so are their lengths)."""
    return SamplingOptions(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=False)


class _GroupStepper:
    """One engine's group: admitted at construction, then stepped one step at a time, with its own clocks."""

    def __init__(self, core: EngineCore, prompts: list[SpecPrompt], max_tokens: int, tag: str) -> None:
        if core.scheduler.has_work:
            raise ValueError("run_group needs an idle engine")
        self.core = core
        self.requests = [
            Request(f"{tag}-{index}-{prompt.prompt_id}", list(prompt.token_ids), greedy_options(max_tokens),
                    time.monotonic(), float(max_tokens))
            for index, prompt in enumerate(prompts)
        ]  # fmt: skip
        self.prompt_ids = {request.request_id: prompt.prompt_id for request, prompt in zip(self.requests, prompts)}
        for request in self.requests:
            core.add(request)
        self.before = spec_counters(core)
        self.tokens: dict[str, list[int]] = {request.request_id: [] for request in self.requests}
        self.first_s: dict[str, float] = {}
        self.last_s: dict[str, float] = {}
        self.num_steps = self.num_decode_steps = self.num_decode_tokens = 0
        self.decode_s = self.decode_cpu_s = self.group_s = self.group_cpu_s = 0.0  # group_s: this engine's clock

    def step(self) -> None:
        """One engine step, timed; nothing once the group is done."""
        if not self.core.scheduler.has_work:
            return
        decoding = all(request.num_computed_tokens >= len(request.prompt_token_ids) for request in self.requests)
        started, started_cpu = time.perf_counter(), time.thread_time()
        results = self.core.step()
        wall_s, cpu_s = time.perf_counter() - started, time.thread_time() - started_cpu
        self.num_steps += 1
        self.group_s += wall_s
        self.group_cpu_s += cpu_s
        emitted = 0
        for result in results:
            if result.new_token_ids:
                self.tokens[result.request_id].extend(result.new_token_ids)
                self.first_s.setdefault(result.request_id, self.group_s)
                self.last_s[result.request_id] = self.group_s
                emitted += len(result.new_token_ids)
        if decoding:
            self.num_decode_steps += 1
            self.num_decode_tokens += emitted
            self.decode_s += wall_s
            self.decode_cpu_s += cpu_s

    def result(self) -> GroupRun:
        tokens, first_s, last_s = self.tokens, self.first_s, self.last_s
        tpot = tuple((last_s[rid] - first_s[rid]) / (len(ids) - 1) for rid, ids in tokens.items() if len(ids) >= 2)
        outputs = {self.prompt_ids[rid]: tuple(ids) for rid, ids in tokens.items()}
        counters = spec_counters(self.core).minus(self.before)
        return GroupRun(outputs, self.num_steps, self.num_decode_steps, self.num_decode_tokens, self.decode_s,
                        self.decode_cpu_s, tpot, counters, self.group_s, self.group_cpu_s)  # fmt: skip


def run_groups(
    cores: dict[K, EngineCore], prompts: list[SpecPrompt], max_tokens: int, tag: str, max_steps: int = 100_000
) -> dict[K, GroupRun]:
    """Admits every prompt at once into each engine (all idle before), then steps them in turn, one step of
    each in the dict's order, until every engine is idle."""
    steppers = {key: _GroupStepper(core, prompts, max_tokens, f"{tag}-{index}") for index, (key, core) in
                enumerate(cores.items())}  # fmt: skip
    while any(stepper.core.scheduler.has_work for stepper in steppers.values()):
        if max(stepper.num_steps for stepper in steppers.values()) >= max_steps:
            raise RuntimeError(f"group {tag} still running after {max_steps} steps")
        for stepper in steppers.values():
            stepper.step()
    return {key: stepper.result() for key, stepper in steppers.items()}


def run_group(
    core: EngineCore, prompts: list[SpecPrompt], max_tokens: int, tag: str, max_steps: int = 100_000
) -> GroupRun:
    """Admits every prompt at once, steps until the engine is idle; the engine must be idle before."""
    return run_groups({0: core}, prompts, max_tokens, tag, max_steps)[0]
