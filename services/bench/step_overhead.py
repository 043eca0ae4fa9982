"""`alise bench step`: host time per engine step, in two views.

Main view (step_direct.py, step_host.py): host ms of one EngineCore.step() read off a clock, with a
decoder whose operators cost next to nothing, for the engine at a baseline commit ("before") and
this tree ("after"), side by side in alternating worker processes; per phase as a second split.
On a GPU the operators run asynchronously and this host time is what delays the next launch.

Operator-subtracted view (--operator-phases, minutes; the figures of the persistent-batch pass):
the old list-built path (services/bench/step_legacy.py: unfused Hugging Face modules, RoPE with
torch.cat, sampling row by row) against the engine's ModelRunner on the real tiny model, 1 thread.
Workloads: 1, 64 and 256 running decodes (64-token prompts), each without and with one new request
whose 2,048-token prompt is prefilled in the same step; and the largest batch with every decode
sampled (temperature 0.8, top-k 50, top-p 0.9). Host time = thread CPU time of a phase minus the
thread CPU time inside operators (a TorchDispatchMode in the same step), so it carries the residue
of subtracting 70-1,000 ms of operator time (about +-1 ms at 256 decodes). The CPU reference
attention is reported apart from "launch". Also: operator calls per decode step of a 32-layer
Llama-shaped random model, before and after. Prints tables; saves JSON.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from services.bench import step_direct, step_host
from services.bench.results import build_report, write_report
from services.bench.step_legacy import LegacyRunner
from services.bench.step_ops import AttentionProbe, OperatorCounter, OperatorTimer, clock_cost_ns
from services.common import arg_types
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine.block_pool import KvBlockManager
from services.engine.model_loader import load_model
from services.engine.model_runner import ModelRunner
from services.engine.request import Request, SamplingOptions
from services.engine.scheduler import Scheduler, SchedulerLimits, make_policy

PHASES = ("schedule", "prepare", "launch", "sample", "update")
PROMPT_TOKENS = 64  # prompt of each decoding request
CHUNK_TOKENS = 2048
BLOCK_SIZE = 16
SAMPLED_TEMPERATURE = 0.8  # a workload with every decode sampled (top-k 50, top-p 0.9): the sampler's case


@dataclass(frozen=True)
class StepConfig:
    num_decodes: tuple[int, ...]
    num_steps: int  # measured steps per path and workload
    num_warmup_steps: int
    num_layers_for_op_count: int
    seed: int


@dataclass(frozen=True)
class PathFigures:
    path: str  # before | after
    num_decodes: int
    chunk_tokens: int
    temperature: float  # of every decoding request: 0 = greedy, else with top-k 50 and top-p 0.9
    host_ms: dict[str, float]  # per phase, median host time
    attention_ms: float  # thread time in the CPU reference attention (Python + operators; one launch on CUDA)
    operators_ms: float  # time inside the other operators (prepare + launch + sample)
    total_host_ms: float  # sum of host_ms


def _request(request_id: str, prompt: list[int], max_tokens: int, temperature: float) -> Request:
    options = SamplingOptions(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=0.9 if temperature else 1.0,
        top_k=50 if temperature else 0,
        seed=7,
        ignore_eos=True,
    )
    return Request(request_id, prompt, options, 0.0, float(max_tokens))


class _Path:
    """One path's scheduler, runner and timed step."""

    def __init__(
        self, name: str, model, num_decodes: int, chunk: bool, config: StepConfig, temperature: float = 0.0
    ) -> None:
        self.name, self.chunk = name, chunk
        self.vocab_size = model.config.vocab_size
        steps = config.num_steps + config.num_warmup_steps + 2
        num_blocks = num_decodes * (-(-(PROMPT_TOKENS + steps) // BLOCK_SIZE)) + 2 * CHUNK_TOKENS // BLOCK_SIZE + 8
        self.kv = KvBlockManager(num_blocks, BLOCK_SIZE)
        limits = SchedulerLimits(num_decodes + 1, max(num_decodes * PROMPT_TOKENS, num_decodes + CHUNK_TOKENS), 8192)
        self.scheduler = Scheduler(make_policy("fcfs"), limits, self.kv, None)
        self.runner = (LegacyRunner if name == "before" else ModelRunner)(model, self.kv, num_blocks)
        self.probe = AttentionProbe(self.runner.attention)
        self.runner.attention = self.probe
        rng = np.random.default_rng(config.seed)
        for index in range(num_decodes):
            prompt = rng.integers(3, self.vocab_size, PROMPT_TOKENS).tolist()
            self.scheduler.add(_request(f"d{index}", prompt, 10_000, temperature))
        self.scheduler.limits = SchedulerLimits(num_decodes + 1, num_decodes + CHUNK_TOKENS, 8192)
        self.rng, self.num_chunks = rng, 0
        self.clock_ns = clock_cost_ns()

    def prefill(self) -> None:
        """Runs steps until every decoder's prompt is in the cache (its next step decodes)."""
        with torch.inference_mode():
            while self.scheduler.waiting or any(r.num_uncomputed_tokens > 1 for r in self.scheduler.running):
                output = self.scheduler.schedule()
                self.scheduler.update(output, self.runner.execute(output))

    def step(self, overhead_ns: float) -> dict[str, float]:
        """One step: thread ns per phase. launch and sample run under the operator timer: their host
        time is their thread time minus the attention backend's (launch; reported apart as
        'attention'), the time inside operators and the timer's own cost per call, all from the same
        step (sample used to subtract the operator time of other steps: its sampled workload's
        operators vary by several ms from step to step, more than the host time measured).
        schedule, prepare and update run plain (their operators only build small index tensors)."""
        if self.chunk:
            self.num_chunks += 1
            prompt = self.rng.integers(3, self.vocab_size, CHUNK_TOKENS).tolist()
            self.scheduler.add(_request(f"c{self.num_chunks}", prompt, 1, 0.0))
        figures, clock = {}, time.thread_time_ns
        launch_timer = OperatorTimer()
        self.probe.wall_ns, self.probe.mode = 0, launch_timer
        with torch.inference_mode():
            started = clock()
            output = self.scheduler.schedule()
            figures["schedule"] = clock() - started
            for phase, run in self._phases(output):
                timer = launch_timer if phase == "launch" else OperatorTimer() if phase == "sample" else None
                started = clock()
                if timer is None:
                    run()
                else:
                    with timer:
                        run()
                figures[phase] = clock() - started
                if phase == "sample" and timer is not None:
                    inside = timer.inside_ns["decoder"] - timer.calls["decoder"] * self.clock_ns
                    figures["sample_operators"] = inside
                    figures["sample"] -= inside + timer.calls["decoder"] * overhead_ns
        inside, calls = launch_timer.inside_ns["decoder"], launch_timer.calls["decoder"]
        figures["attention"] = self.probe.wall_ns  # the CPU reference attention: Python and operators
        inside -= calls * self.clock_ns  # each operator's inside time also holds one clock reading
        figures["launch"] -= self.probe.wall_ns + inside + calls * overhead_ns
        figures["operators"] = inside
        return figures

    def _phases(self, output):
        runner, state = self.runner, {}
        if self.name == "before":

            def prepare():
                state["inputs"] = runner.prepare(output)

            def launch():
                ids, positions, metadata = state["inputs"]
                state["logits"] = runner.logits_of(output, runner.forward(ids, positions, metadata), metadata)

            def sample():
                state["sampled"] = runner.sample(output, state["logits"])
        else:

            def prepare():
                arrays = runner.prepare_arrays(output)
                state["inputs"] = arrays, runner.metadata_of(arrays)

            def launch():
                arrays, metadata = state["inputs"]
                state["logits"] = runner.logits_of(arrays, runner.forward(arrays.input_ids, arrays.positions, metadata))

            def sample():
                state["sampled"] = runner.sample(output, state["inputs"][0], state["logits"])

        def update():
            for result in self.scheduler.update(output, state["sampled"]):
                if result.finish_reason is not None:
                    runner.forget(result.request_id)

        return [("prepare", prepare), ("launch", launch), ("sample", sample), ("update", update)]


def calibrate_timer_overhead_ns(model, name: str, config: StepConfig, repeats: int = 15) -> float:
    """Thread ns the operator timer adds per call, on the engine's own operator mix: one decode's
    forward repeated on identical inputs, plain and timed (the same work apart from the timer)."""
    path = _Path(name, model, 1, False, config)
    path.prefill()
    with torch.inference_mode():
        output = path.scheduler.schedule()
        if name == "before":
            inputs = path.runner.prepare(output)
        else:
            arrays = path.runner.prepare_arrays(output)
            inputs = arrays.input_ids, arrays.positions, path.runner.metadata_of(arrays)
        forward = lambda: path.runner.forward(*inputs)  # noqa: E731
        plain, timed, calls = [], [], 0
        for _ in range(repeats):
            started = time.thread_time_ns()
            forward()
            plain.append(time.thread_time_ns() - started)
            timer = OperatorTimer()
            started = time.thread_time_ns()
            with timer:
                forward()
            timed.append(time.thread_time_ns() - started)
            calls = sum(timer.calls.values())
    return max(0.0, (float(np.median(timed)) - float(np.median(plain))) / calls) if calls else 0.0


def measure(
    model, name: str, num_decodes: int, chunk: bool, config: StepConfig, overhead_ns: float, temperature: float = 0.0
) -> PathFigures:
    """Median host ms per phase over the measured steps."""
    path = _Path(name, model, num_decodes, chunk, config, temperature)
    path.prefill()
    steps = [path.step(overhead_ns) for _ in range(config.num_warmup_steps + config.num_steps)]
    steps = steps[config.num_warmup_steps :]
    median = lambda key, rows: max(0.0, float(np.median([s[key] for s in rows])) / 1e6)  # noqa: E731
    host = {phase: median(phase, steps) for phase in PHASES}
    operators = median("operators", steps) + median("sample_operators", steps)
    return PathFigures(
        name,
        num_decodes,
        CHUNK_TOKENS if chunk else 0,
        temperature,
        host,
        median("attention", steps),
        operators,
        sum(host.values()),
    )


def llama_32_layer_model(seed: int) -> torch.nn.Module:
    """Llama-3-8B's layer count and GQA ratio (32 layers, 32 / 8 heads) at small widths: the same
    operators per layer, cheap to build and run on CPU."""
    return step_host.seeded_random_llama(
        seed,
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=16,
        max_position_embeddings=4096,
        rope_theta=500000.0,
    )


def count_decode_operators(seed: int, num_decodes: int = 8) -> dict[str, dict]:
    """Operator calls of one decode step's forward, before and after, on the 32-layer model."""
    model = llama_32_layer_model(seed)
    num_layers = model.config.num_hidden_layers
    counts = {}
    for name in ("before", "after"):
        config = StepConfig((num_decodes,), 0, 0, num_layers, seed)
        path = _Path(name, model, num_decodes, False, config)
        path.prefill()
        with torch.inference_mode():
            output = path.scheduler.schedule()
            if name == "before":
                inputs = path.runner.prepare(output)
            else:
                arrays = path.runner.prepare_arrays(output)
                inputs = arrays.input_ids, arrays.positions, path.runner.metadata_of(arrays)
            counter = OperatorCounter()
            path.probe.mode = counter
            with counter:
                path.runner.forward(*inputs)
        decoder = counter.count("decoder")
        counts[name] = {
            "decoder_ops": decoder,  # outside the attention backend, views excluded
            "decoder_view_ops": counter.count("decoder", views=True) - decoder,
            "attention_backend_calls": 2 * num_layers,  # write + attend per layer: one launch each on CUDA
            "cpu_reference_attention_ops": counter.count("attention"),
            "ops_per_layer": (decoder + 2 * num_layers) / num_layers,  # embedding and final norm included
            "decoder_ops_by_operator": counter.by_operator("decoder"),
        }
    return counts


def run_benchmark(config: StepConfig) -> dict:
    torch.set_num_threads(1)

    def load() -> torch.nn.Module:
        return load_model(DUMMY_TINY_MODEL, dtype=torch.float32, device=torch.device("cpu"), seed=config.seed).model

    overhead_ns = {name: calibrate_timer_overhead_ns(load(), name, config) for name in ("before", "after")}
    paths = []
    workloads = [(n, chunk, 0.0) for n in config.num_decodes for chunk in (False, True)]
    workloads.append((max(config.num_decodes), False, SAMPLED_TEMPERATURE))  # the sampler's own difference
    for num_decodes, chunk, temperature in workloads:
        for name in ("before", "after"):  # side by side: the same workload, one after the other
            paths.append(measure(load(), name, num_decodes, chunk, config, overhead_ns[name], temperature))
            _print_row(paths[-1])
    operators = count_decode_operators(config.seed)
    goals = _goals(paths, operators)
    return {
        "timer_overhead_ns_per_call": overhead_ns,
        "paths": paths,
        "operators_per_decode_step": operators,
        "goals": goals,
    }


def _goals(paths: list[PathFigures], operators: dict) -> dict:
    after = {(p.num_decodes, p.chunk_tokens): p.total_host_ms for p in paths if p.path == "after" and not p.temperature}
    return {
        "host_ms_256_decodes_plus_chunk": {"goal": 1.0, "after": after.get((256, CHUNK_TOKENS))},
        "host_ms_256_decodes": {"goal": 0.3, "after": after.get((256, 0))},
        "ops_per_layer_eager": {"goal": 12, "after": operators["after"]["ops_per_layer"]},
    }


def _print_row(figures: PathFigures) -> None:
    host = figures.host_ms
    print(
        f"{figures.num_decodes:>7} {figures.chunk_tokens:>6} {figures.temperature:>5} {figures.path:<7}"
        + "".join(f" {host[phase]:>8.3f}" for phase in PHASES)
        + f" {figures.total_host_ms:>8.3f} {figures.attention_ms:>10.2f} {figures.operators_ms:>10.2f}",
        flush=True,
    )


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("step", help="engine host ms per step by phase, before vs after (tiny model, CPU)")
    parser.add_argument("--num-decodes", default="1,64,256", help="comma-separated running decodes per workload")
    parser.add_argument("--policies", default=",".join(step_direct.DEFAULT_POLICIES), help="first: every workload")
    parser.add_argument("--num-steps", type=arg_types.positive_int, default=40, help="measured steps per round")
    parser.add_argument("--num-warmup-steps", type=arg_types.non_negative_int, default=5)
    parser.add_argument("--rounds", type=arg_types.positive_int, default=3, help="alternations of before and after")
    parser.add_argument(
        "--baseline-commit", default=step_direct.BASELINE_COMMIT, help="the 'before' engine ('none': after only)"
    )
    parser.add_argument(
        "--operator-phases",
        action="store_true",
        help="also the operator-subtracted per-phase view on the real tiny model, legacy path vs runner (minutes)",
    )
    parser.add_argument("--seed", type=arg_types.seed, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/benchmarks/step_overhead.json"))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    num_decodes = arg_types.comma_list(args.num_decodes, int)
    policies = arg_types.comma_list(args.policies, str)
    baseline = None if args.baseline_commit.lower() == "none" else args.baseline_commit
    direct = step_direct.DirectConfig(
        num_decodes, policies, args.num_steps, args.num_warmup_steps, args.rounds, args.seed, baseline
    )
    print("host ms per engine step, measured directly: EngineCore.step() thread time on a null-operator decoder")
    load_start = os.getloadavg()[0]  # a shared machine: how busy it was says how far to trust small differences
    summary = step_direct.summarize(step_direct.measure_paths(direct))
    step_direct.print_table(summary)
    report: dict = {"method": step_direct.METHOD, "direct": summary, "goals": step_direct.goals(summary, policies[0])}
    report["load_average_1m"] = {"start": load_start, "end": os.getloadavg()[0], "num_cpus": os.cpu_count()}
    for goal, figures in report["goals"].items():
        if isinstance(figures, dict):
            print(f"goal {goal}: {figures['after']} ms (goal {figures['goal']} ms, policy {policies[0]})")
    config: dict = {"direct": direct}
    if args.operator_phases:
        phases = StepConfig(num_decodes, 12, 3, 32, args.seed)
        config["operator_phases"] = phases
        print("operator-subtracted view: host ms per phase, legacy path vs runner, real tiny model")
        print(
            f"{'decodes':>7} {'chunk':>6} {'temp':>5} {'path':<7}"
            + "".join(f" {p:>8}" for p in PHASES)
            + f" {'host':>8} {'attention':>10} {'operators':>10}"
        )
        report["operator_phases"] = run_benchmark(phases)
    path = write_report(args.out, build_report("step_overhead", config, report))
    print(f"saved {path}")
    return 0
