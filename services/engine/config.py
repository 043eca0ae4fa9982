"""EngineConfig: every engine setting, validated once at the entry point."""

from __future__ import annotations

import argparse
import socket
import uuid
from dataclasses import dataclass
from enum import StrEnum

from services.common.flags import add_server_flags, is_host_port, validate_port
from services.common.metrics_server import (
    ENGINE_METRICS_PORT,
    MetricsPort,
    add_metrics_port_flag,
    metrics_port_from_flag,
)
from services.common.model_catalog import DEFAULT_MODEL, DUMMY_TINY_MODEL, parse_model_spec
from services.common.tls import TlsFiles, add_tls_flags, tls_from_args
from services.engine.model_presets import ARCHITECTURE_PRESETS
from services.engine.scheduler.policy import DEFAULT_POLICY, POLICY_NAMES, PolicyName


class Dtype(StrEnum):
    """Weights' and activations' dtype; a value other than auto is the torch dtype's name."""

    AUTO = "auto"  # bfloat16 on CUDA and on CPUs with native bf16, else float32
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"


class Device(StrEnum):
    AUTO = "auto"  # cuda when available
    CPU = "cpu"
    CUDA = "cuda"


DTYPES = tuple(dtype.value for dtype in Dtype)
DEVICES = tuple(device.value for device in Device)


def _member(enum: type[StrEnum], name: str, value: object) -> StrEnum:
    """`value` as a member of `enum` (a member or its value); ValueError lists the valid values."""
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{name} must be one of {[member.value for member in enum]}, got {value!r}") from None


@dataclass(frozen=True)
class EngineConfig:
    """Settings of one engine replica; ValueError names the bad field."""

    host: str = "127.0.0.1"  # interface to listen on
    port: int = 50052  # TCP port; 0 = the OS picks
    log_level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR
    drain_s: float = 5.0  # on SIGTERM, time in-flight streams may finish
    model: str = DEFAULT_MODEL  # a catalog name, dummy-llama-tiny, dummy:<preset|dir>, or a local HF dir
    engine_id: str = "engine-0"  # stable id of this replica (the --engine-id flag defaults to hostname-random)
    dtype: Dtype = Dtype.AUTO  # auto = bfloat16 on CUDA and on CPUs with native bf16, else float32
    device: Device = Device.AUTO  # auto = cuda when available
    seed: int = 0  # seeds a random-weight model's weights (dummy-llama-tiny, dummy:...)
    block_size_tokens: int = 16  # token positions per KV block
    num_kv_blocks: int = 0  # blocks in the KV pool; 0 = as many as kv_cache_memory_mb holds
    kv_cache_memory_mb: int = 256  # KV pool size when num_kv_blocks is 0, MiB
    max_num_seqs: int = 64  # running batch size at most
    max_num_batched_tokens: int = 512  # tokens per step at most (chunked-prefill budget)
    max_model_len: int = 0  # prompt + output tokens at most; 0 = the model's own context
    # admitted-but-not-finished requests at most; more is RESOURCE_EXHAUSTED (4,096 only turned overload into
    # timeouts: a queue 60x the batch; the deadline check below sheds what cannot finish in time)
    max_waiting_requests: int = 1024
    max_waiting_prompt_tokens: int = 262_144  # prompt tokens of those requests at most; more is RESOURCE_EXHAUSTED
    # reject a request at once when its predicted completion exceeds this x its deadline's time left; 0 = never
    deadline_admission_slack: float = 1.0
    scheduler_policy: PolicyName = DEFAULT_POLICY  # how the scheduler ranks requests (its value works too)
    max_wait_s: float = 60.0  # starvation bound: a request waiting this long is promoted, seconds
    memory_address: str = ""  # memory service host:port; "" = run without one
    cpu_threads: int = 0  # torch intra-op threads on CPU; 0 = half the cores (at least 1)
    # every step eager: no CUDA graphs for decode-only steps (debugging; graphs are never used on CPU)
    enforce_eager: bool = False
    # /metrics HTTP port on `host`; None = not served (the --metrics-port flag defaults to 9102)
    metrics_port: MetricsPort | None = None
    tls: TlsFiles | None = None  # TLS of the engine's server and of its channels to the memory service

    def __post_init__(self) -> None:
        validate_port(self.port)
        parse_model_spec(self.model, frozenset(ARCHITECTURE_PRESETS))  # ValueError lists the valid names
        if self.memory_address and not is_host_port(self.memory_address):
            raise ValueError(f"memory_address must be host:port or empty, got {self.memory_address!r}")
        # A value's text ("float32") is accepted and converted to the member once, here.
        object.__setattr__(self, "dtype", _member(Dtype, "dtype", self.dtype))
        object.__setattr__(self, "device", _member(Device, "device", self.device))
        object.__setattr__(self, "scheduler_policy", _member(PolicyName, "scheduler_policy", self.scheduler_policy))
        if not self.max_wait_s > 0:
            raise ValueError(f"max_wait_s must be > 0, got {self.max_wait_s}")
        for name in (
            "block_size_tokens", "max_num_seqs", "max_num_batched_tokens", "max_waiting_requests",
            "max_waiting_prompt_tokens",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("num_kv_blocks", "max_model_len", "kv_cache_memory_mb", "cpu_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_kv_blocks == 0 and self.kv_cache_memory_mb == 0:
            raise ValueError("set num_kv_blocks or kv_cache_memory_mb")
        if self.drain_s < 0:
            raise ValueError(f"drain_s must be >= 0, got {self.drain_s}")
        if not self.deadline_admission_slack >= 0:
            raise ValueError(f"deadline_admission_slack must be >= 0, got {self.deadline_admission_slack}")

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "EngineConfig":
        parser = argparse.ArgumentParser(prog="python -m services.engine", description=__doc__)
        add_server_flags(parser, default_port=50052)
        parser.add_argument(
            "--model", default=DEFAULT_MODEL,
            help=f"{DEFAULT_MODEL} (installed by scripts/install.sh), {DUMMY_TINY_MODEL} (random weights, tests), "
            "dummy:<preset|hf dir> (random weights of a real architecture), or a local Hugging Face directory",
        )
        parser.add_argument("--engine-id", default="", help="stable replica id (default: hostname-random)")
        parser.add_argument("--dtype", default="auto", choices=DTYPES)
        parser.add_argument("--device", default="auto", choices=DEVICES)
        parser.add_argument("--seed", type=int, default=0, help="seed of a random-weight model's weights")
        parser.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
        parser.add_argument("--num-kv-blocks", type=int, default=0, help="KV pool blocks (0: from memory)")
        parser.add_argument("--kv-cache-memory-mb", type=int, default=256, help="KV pool MiB")
        parser.add_argument("--max-num-seqs", type=int, default=64)
        parser.add_argument("--max-num-batched-tokens", type=int, default=512)
        parser.add_argument("--max-model-len", type=int, default=0)
        parser.add_argument("--max-waiting-requests", type=int, default=1024, help="live requests at most")
        parser.add_argument("--max-waiting-prompt-tokens", type=int, default=262_144,
                            help="prompt tokens of the live requests at most")
        parser.add_argument("--deadline-admission-slack", type=float, default=1.0,
                            help="reject when predicted completion > this x the deadline's time left (0 = off)")
        parser.add_argument(
            "--scheduler-policy", default=DEFAULT_POLICY, choices=POLICY_NAMES,
            help="alise: shortest predicted remaining time; fcfs: vLLM-like; srpt-oracle: benchmarks only",
        )
        parser.add_argument(
            "--max-wait-s", type=float, default=60.0,
            help="starvation bound: a request that waited this long is promoted ahead of all others",
        )
        parser.add_argument("--memory-address", default="", help="memory service host:port")
        add_metrics_port_flag(parser, default_port=ENGINE_METRICS_PORT)
        add_tls_flags(parser)
        parser.add_argument(
            "--cpu-threads", type=int, default=0,
            help="torch CPU threads (0 = half the cores): more threads than free cores makes OpenMP spin",
        )
        parser.add_argument(
            "--enforce-eager", action="store_true",
            help="run every step eagerly: no CUDA graphs for decode-only steps (CPU always runs eagerly)",
        )
        args = parser.parse_args(argv)
        return cls(
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            drain_s=args.drain_seconds,
            model=args.model,
            engine_id=args.engine_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}",
            dtype=args.dtype,
            device=args.device,
            seed=args.seed,
            block_size_tokens=args.block_size,
            num_kv_blocks=args.num_kv_blocks,
            kv_cache_memory_mb=args.kv_cache_memory_mb,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            max_model_len=args.max_model_len,
            max_waiting_requests=args.max_waiting_requests,
            max_waiting_prompt_tokens=args.max_waiting_prompt_tokens,
            deadline_admission_slack=args.deadline_admission_slack,
            scheduler_policy=args.scheduler_policy,
            max_wait_s=args.max_wait_s,
            memory_address=args.memory_address,
            cpu_threads=args.cpu_threads,
            enforce_eager=args.enforce_eager,
            metrics_port=metrics_port_from_flag(args.metrics_port, default_port=ENGINE_METRICS_PORT),
            tls=tls_from_args(args),
        )
