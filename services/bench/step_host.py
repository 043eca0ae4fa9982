"""Host overhead per engine step, measured directly: the engine's own EngineCore, Scheduler and
ModelRunner stepping a decoder whose operators cost next to nothing, so a step's thread time IS
its host time (nothing subtracted).

Why this is the measure: on a GPU the model's operators run asynchronously; what decides whether
the device waits between steps is the host work of a step (schedule, prepare the inputs, launch,
sample bookkeeping, update). Subtracting 70-1,000 ms of CPU operator time from a step to find
1 ms of host time (step_overhead.py's per-phase view) leaves about +-1 ms of residue; here the
operators are a few microseconds and the figure is read off a clock.

The null-operator decoder: a Llama at the smallest dims (hidden 8, one head of 8, vocab 32)
whose fused decoder (fused_llama.py) gets an empty layer list, so a forward is the embedding, the
final RMSNorm and the LM head, and sampling an argmax over 32 logits (~10 operators, measured apart
as `null_operators_ms`). Everything else is the engine's real path, the attention backend's
per-step `prepare` included; the per-layer launches (12 per layer, on CUDA or in a graph) are the
model's operators and are not counted, as the goal defines.

This file is also run as a script against an older tree (PYTHONPATH = an extracted commit, see
step_direct.py), so it imports only engine APIs that tree has and prints its figures as JSON.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

PROMPT_TOKENS = 64  # prompt of each decoding request
CHUNK_TOKENS = 2048  # the prompt prefilled alongside the decodes, one new request per step
NULL_VOCAB = 32  # an argmax over 32 logits: the sampler's operator stays a few microseconds
BLOCK_SIZE = 16


def null_operator_model() -> torch.nn.Module:
    """A one-layer Llama at the smallest dims (its layer list is emptied in the runner's decoder)."""
    return seeded_random_llama(
        0,
        vocab_size=NULL_VOCAB,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=8192,
    )


def seeded_random_llama(seed: int, **config_fields: object) -> torch.nn.Module:
    """A Llama of these dims with random weights drawn from `seed`, untied, in eval mode. Here, not in
    the engine: this file also runs against an older engine tree (module docstring), which lacks it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", tie_word_embeddings=False, **config_fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).eval()


class HostPath:
    """One workload: an engine core over the null-operator model, its decodes already running."""

    def __init__(self, num_decodes: int, chunk: bool, policy: str, seed: int, num_steps: int) -> None:
        from services.engine.block_pool import KvBlockManager
        from services.engine.engine_core import EngineCore
        from services.engine.kernels.backend import CudaAttention
        from services.engine.model_runner import ModelRunner
        from services.engine.scheduler import Scheduler, SchedulerLimits, make_policy

        steps = num_steps + 4
        num_blocks = num_decodes * (-(-(PROMPT_TOKENS + steps) // BLOCK_SIZE)) + 2 * CHUNK_TOKENS // BLOCK_SIZE + 8
        self.kv = KvBlockManager(num_blocks, BLOCK_SIZE)
        limits = SchedulerLimits(num_decodes + 1, num_decodes + CHUNK_TOKENS, 8192)
        self.scheduler = Scheduler(make_policy(policy), limits, self.kv, None)
        self.runner = ModelRunner(null_operator_model(), self.kv, num_blocks)
        self.runner.decoder.layers = []  # the null-operator decoder: embedding, final norm, LM head
        # The GPU backend's per-step host work (its launch plan from the host lists: ops.plan_attention
        # runs on any device), not the CPU reference's decode batching; no layer calls the backend.
        self.runner.attention = CudaAttention(self.runner.num_heads, self.runner.num_kv_heads)
        self.core = EngineCore(self.scheduler, self.runner)
        self.chunk, self.num_chunks = chunk, 0
        self.rng = np.random.default_rng(seed)
        for index in range(num_decodes):
            self.core.add(self._request(f"d{index}", PROMPT_TOKENS, 1_000_000))
        while self.scheduler.waiting or any(r.num_uncomputed_tokens > 1 for r in self.scheduler.running):
            self.core.step()

    def _request(self, request_id: str, num_prompt_tokens: int, max_tokens: int):
        from services.engine.request import Request, SamplingOptions

        prompt = self.rng.integers(3, NULL_VOCAB, num_prompt_tokens).tolist()
        options = SamplingOptions(max_tokens, 0.0, 1.0, 0, 7, True)
        return Request(request_id, prompt, options, time.monotonic(), float(max(1, min(max_tokens, 200))))

    def add_chunk(self) -> None:
        """The step's prefill: a new request whose whole 2,048-token prompt fits this step's budget
        and that finishes at its first token (so every step has exactly one chunk)."""
        if self.chunk:
            self.num_chunks += 1
            self.core.add(self._request(f"c{self.num_chunks}", CHUNK_TOKENS, 1))

    def step_ns(self) -> tuple[int, int]:
        """(thread ns, wall ns) of one EngineCore.step()."""
        self.add_chunk()
        started, wall = time.thread_time_ns(), time.perf_counter_ns()
        self.core.step()
        return time.thread_time_ns() - started, time.perf_counter_ns() - wall

    def phases_ns(self) -> dict[str, int]:
        """One step split by phase (the second view), through the runner's public steps."""
        runner, scheduler, clock = self.runner, self.scheduler, time.thread_time_ns
        self.add_chunk()
        figures = {}
        with torch.inference_mode():
            started = clock()
            output = scheduler.schedule()
            figures["schedule"] = clock() - started
            started = clock()
            arrays = runner.prepare_arrays(output)
            metadata = runner.metadata_of(arrays)
            figures["prepare"] = clock() - started
            started = clock()
            logits = runner.logits_of(arrays, runner.forward(arrays.input_ids, arrays.positions, metadata))
            figures["launch"] = clock() - started
            started = clock()
            sampled = runner.sample(output, arrays, logits)
            figures["sample"] = clock() - started
            started = clock()
            scheduler.update(output, sampled)
            for request_id in scheduler.finished_request_ids:  # as EngineCore.step forgets rows
                runner.forget(request_id)
            figures["update"] = clock() - started
        return figures

    def null_operators_ns(self, repeats: int = 20) -> int:
        """Thread ns of the null decoder's operators alone (forward, LM head, argmax) on a measured step's
        inputs (the chunk's tokens included when the workload has one): what the step figures hold
        besides host work."""
        self.add_chunk()
        with torch.inference_mode():
            output = self.scheduler.schedule()
            arrays = self.runner.prepare_arrays(output)
            metadata = self.runner.metadata_of(arrays)
            times = []
            for _ in range(repeats):
                started = time.thread_time_ns()
                hidden = self.runner.forward(arrays.input_ids, arrays.positions, metadata)
                self.runner.logits_of(arrays, hidden).argmax(dim=-1)
                times.append(time.thread_time_ns() - started)
        return int(np.median(times))


def measure(workloads: list[tuple[int, bool, str]], num_steps: int, num_warmup_steps: int, seed: int) -> list[dict]:
    """Per workload: every measured step's thread and wall ns (EngineCore.step) and per-phase ns."""
    torch.set_num_threads(1)
    rows = []
    for num_decodes, chunk, policy in workloads:
        path = HostPath(num_decodes, chunk, policy, seed, 2 * (num_steps + num_warmup_steps))
        for _ in range(num_warmup_steps):
            path.step_ns()
        steps = [path.step_ns() for _ in range(num_steps)]
        phases = [path.phases_ns() for _ in range(num_steps)]
        rows.append(
            {
                "num_decodes": num_decodes,
                "chunk_tokens": CHUNK_TOKENS if chunk else 0,
                "policy": policy,
                "step_thread_ns": [s[0] for s in steps],
                "step_wall_ns": [s[1] for s in steps],
                "phases_ns": {name: [p[name] for p in phases] for name in phases[0]},
                "null_operators_ns": path.null_operators_ns(),
            }
        )
    return rows


def main(argv: list[str]) -> int:
    """argv: one JSON object {workloads: [[num_decodes, chunk, policy], ...], num_steps, num_warmup_steps,
    seed}; prints {engine_dir: the engine package measured, rows: the measured rows} as one JSON line."""
    import services.engine

    spec = json.loads(argv[0])
    workloads = [(int(n), bool(chunk), str(policy)) for n, chunk, policy in spec["workloads"]]
    rows = measure(workloads, spec["num_steps"], spec["num_warmup_steps"], spec["seed"])
    print(json.dumps({"engine_dir": list(services.engine.__path__)[0], "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
