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

A step's wall time includes what speculation adds around the model: n-gram drafting on the host
(Speculator.plan), early-exit drafting inside the runner, verification and rollback.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.bench.spec_prompts import SpecPrompt
from services.engine.engine_core import EngineCore
from services.engine.request import Request, SamplingOptions


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


def spec_counters(core: EngineCore) -> SpecCounters:
    speculator = core.speculator
    if speculator is None:
        return SpecCounters(0, 0, 0)
    stats = speculator.stats.snapshot()
    return SpecCounters(stats.num_draft_tokens, stats.num_accepted_tokens, stats.num_request_verifies)


def greedy_options(max_tokens: int) -> SamplingOptions:
    """Greedy, stopping at EOS (greedy outputs are identical across methods, so are their lengths)."""
    return SamplingOptions(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=False)


def run_group(
    core: EngineCore, prompts: list[SpecPrompt], max_tokens: int, tag: str, max_steps: int = 100_000
) -> GroupRun:
    """Admits every prompt at once, steps until the engine is idle; the engine must be idle before."""
    if core.scheduler.has_work:
        raise ValueError("run_group needs an idle engine")
    requests = [
        Request(f"{tag}-{index}-{prompt.prompt_id}", list(prompt.token_ids), greedy_options(max_tokens), time.monotonic(),
                float(max_tokens))
        for index, prompt in enumerate(prompts)
    ]  # fmt: skip
    prompt_ids = {request.request_id: prompt.prompt_id for request, prompt in zip(requests, prompts)}
    for request in requests:
        core.add(request)
    before = spec_counters(core)
    tokens: dict[str, list[int]] = {request.request_id: [] for request in requests}
    first_s: dict[str, float] = {}
    last_s: dict[str, float] = {}
    num_steps = num_decode_steps = num_decode_tokens = 0
    decode_s = decode_cpu_s = 0.0
    while core.scheduler.has_work:
        if num_steps >= max_steps:
            raise RuntimeError(f"group {tag} still running after {max_steps} steps")
        decoding = all(request.num_computed_tokens >= len(request.prompt_token_ids) for request in requests)
        started, started_cpu = time.perf_counter(), time.thread_time()
        results = core.step()
        ended, ended_cpu = time.perf_counter(), time.thread_time()
        num_steps += 1
        emitted = 0
        for result in results:
            if result.new_token_ids:
                tokens[result.request_id].extend(result.new_token_ids)
                first_s.setdefault(result.request_id, ended)
                last_s[result.request_id] = ended
                emitted += len(result.new_token_ids)
        if decoding:
            num_decode_steps += 1
            num_decode_tokens += emitted
            decode_s += ended - started
            decode_cpu_s += ended_cpu - started_cpu
    tpot = tuple((last_s[rid] - first_s[rid]) / (len(ids) - 1) for rid, ids in tokens.items() if len(ids) >= 2)
    outputs = {prompt_ids[rid]: tuple(ids) for rid, ids in tokens.items()}
    return GroupRun(
        outputs,
        num_steps,
        num_decode_steps,
        num_decode_tokens,
        decode_s,
        decode_cpu_s,
        tpot,
        spec_counters(core).minus(before),
    )
