"""Settings of one `alise bench serve` run, validated once at the entry point (saved with the results)."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from services.bench.slo_metrics import DEFAULT_TPOT_BOUND_S, DEFAULT_TTFT_BOUND_S, SloBounds
from services.bench.steady_state import SteadyStateWindow
from services.bench.workload import TRACE_NAMES

RUNNING_STACK_LABEL = "running-stack"  # policy label when the stack's policy is not known


class OutputLengths(enum.Enum):
    """Who decides how long each answer is."""

    DATASET = "dataset"  # vLLM's method: ignore_eos, the dataset's answer length as max_tokens
    MODEL = "model"  # the served model's own EOS: the prompt as a chat message, max_tokens a cap


class PolicyTurns(enum.Enum):
    """How several policies' stacks share the machine at each rate point."""

    # one policy's run after another at each rate; an idle stack waits on its sockets and costs ~nothing
    SEQUENTIAL = "sequential"
    # every policy's run at once, the same requests at the same times: a drift in the load of a shared
    # machine hits every policy alike (a paired design), at the price of the stacks sharing the CPU
    AT_ONCE = "at-once"


@dataclass(frozen=True)
class ServeConfig:
    """What to send, how fast, against which stack(s), and how to judge the results."""

    gateway_address: str | None  # host:port of a running gateway; None with start_stack
    engine_address: str | None  # optional: the engine behind it, asked for its policy name
    start_stack: bool  # start one local stack per policy (alise up's children) and stop it after
    policies: tuple[str, ...]  # engine --scheduler-policy per stack; one label without start_stack
    engine_args: tuple[str, ...]  # extra engine flags for started stacks (e.g. --max-num-seqs=16)
    with_predictor: bool  # started stacks run the predictor service
    with_memory: bool  # started stacks run the memory service (else the engines recompute every preemption)
    trace: str  # a workload.TRACE_NAMES entry
    num_requests: int  # requests per rate point (the same requests at every rate)
    seed: int  # trace sampling, arrivals and sampling seeds
    max_model_len: int  # the trace filter's context (prompt + output, dataset tokens)
    length_divisor: float  # scale_trace: lengths divided by this (CPU runs)
    max_prompt_tokens: int  # scale_trace: prompt cap after division, tokens
    max_output_tokens: int  # scale_trace: output cap after division, tokens
    rates_per_s: tuple[float, ...]  # offered request rates, ascending (inf = all at once)
    burstiness: float  # gamma shape of inter-arrival gaps; 1 = Poisson
    num_client_processes: int  # load-generating processes
    num_unloaded_requests: int  # sequential requests that measure the unloaded latency
    bound_multiples: tuple[float, ...]  # latency bounds as multiples of the unloaded mean
    slo_ttft_s: float | None  # goodput SLO on TTFT, s; None = no TTFT bound
    slo_bound_multiple: float  # goodput SLO on normalized latency, as a multiple of the unloaded mean
    max_send_lag_s: float  # p99 send lag above this flags the client as a possible bottleneck
    max_client_cpu_utilization: float  # a client process busier than this is flagged too
    tokenizer: str  # the served model's tokenizer; "" = the one the gateway reports
    timeout_s: float  # gRPC deadline per request
    startup_timeout_s: float  # per service of a started stack
    output_lengths: OutputLengths = OutputLengths.DATASET  # dataset lengths (ignore_eos) or the model's EOS
    model: str = ""  # --model of started stacks; "" = alise up's default
    window: SteadyStateWindow = SteadyStateWindow()  # warm-up and drain left out of every figure (serve_steady.py)
    slo_tpot_s: float = DEFAULT_TPOT_BOUND_S  # SLO attainment's TPOT bound, s
    closed_loop_concurrency: int | None = None  # set: probe the first policy's capacity first, N in system
    load_fractions: tuple[float, ...] = ()  # set: the rates are these fractions of that capacity (no --rates)
    policy_turns: PolicyTurns = PolicyTurns.SEQUENTIAL  # policies one after another at each rate, or all at once

    @property
    def attainment_slo(self) -> SloBounds:
        """DistServe's per-request SLO of the attainment figure: --slo-ttft-s (default 1 s) and --slo-tpot-ms."""
        return SloBounds(self.slo_ttft_s or DEFAULT_TTFT_BOUND_S, self.slo_tpot_s)

    def __post_init__(self) -> None:
        if self.trace not in TRACE_NAMES:
            raise ValueError(f"--trace must be one of {list(TRACE_NAMES)}, got {self.trace!r}")
        if self.start_stack == (self.gateway_address is not None):
            raise ValueError("give exactly one of --gateway-address and --start-stack")
        if not self.policies or len(set(self.policies)) != len(self.policies):
            raise ValueError(f"--policies must be non-empty and distinct, got {self.policies}")
        if not self.start_stack and len(self.policies) > 1:
            raise ValueError("several --policies need --start-stack (one stack per policy)")
        self._check_rates()
        for name in (
            "num_requests",
            "num_client_processes",
            "num_unloaded_requests",
            "max_model_len",
            "max_prompt_tokens",
            "max_output_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.length_divisor >= 1 or math.isinf(self.length_divisor):
            raise ValueError(f"--length-divisor must be finite and >= 1, got {self.length_divisor}")
        if not self.bound_multiples or min(self.bound_multiples) <= 0 or self.slo_bound_multiple <= 0:
            raise ValueError("--bound-multiples and --slo-bound-multiple must be > 0")
        for name in ("burstiness", "max_send_lag_s", "max_client_cpu_utilization", "timeout_s", "startup_timeout_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be finite and > 0, got {getattr(self, name)}")
        if not 0 < self.slo_tpot_s < math.inf:
            raise ValueError(f"--slo-tpot-ms must be finite and > 0, got {self.slo_tpot_s * 1e3}")
        if self.slo_ttft_s is not None and not self.slo_ttft_s > 0:
            raise ValueError(f"--slo-ttft-s must be > 0, got {self.slo_ttft_s}")

    def _check_rates(self) -> None:
        """Either --rates (absolute), or --load-fractions of the capacity a closed-loop probe measures."""
        if self.closed_loop_concurrency is not None and self.closed_loop_concurrency < 1:
            raise ValueError(f"--capacity-concurrency must be >= 1, got {self.closed_loop_concurrency}")
        if self.load_fractions:
            if self.rates_per_s:
                raise ValueError("give --rates or --load-fractions, not both")
            if self.closed_loop_concurrency is None:
                raise ValueError("--load-fractions needs --capacity-concurrency (the probe that sets the rates)")
            values = self.load_fractions
            if list(values) != sorted(set(values)) or not all(0 < value < math.inf for value in values):
                raise ValueError(f"--load-fractions must be finite, > 0, distinct and ascending, got {values}")
            return
        if not self.rates_per_s or list(self.rates_per_s) != sorted(set(self.rates_per_s)):
            raise ValueError(f"--rates must be distinct and ascending, got {self.rates_per_s}")
        if min(self.rates_per_s) <= 0 or any(math.isnan(rate) for rate in self.rates_per_s):
            raise ValueError(f"--rates must be > 0, got {self.rates_per_s}")
