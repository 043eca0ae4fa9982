"""EngineConfig: every engine setting, validated once at the entry point."""

from __future__ import annotations

import argparse
import socket
import uuid
from dataclasses import dataclass
from enum import StrEnum

from services.common.arg_types import non_negative_int
from services.common.config_flags import add_config_flags, config_values, setting
from services.common.flags import DRAIN_HELP, HOST_HELP, LOG_LEVEL_HELP, PORT_HELP, is_host_port, validate_port
from services.common.metrics_server import (
    ENGINE_METRICS_PORT,
    MetricsPort,
    add_metrics_port_flag,
    metrics_port_from_flag,
)
from services.common.model_catalog import DEFAULT_MODEL, DUMMY_TINY_MODEL, parse_model_spec
from services.common.tls import TlsFiles, add_tls_flags, tls_from_args
from services.engine.kv_dtype import KvCacheDtype
from services.engine.model_presets import ARCHITECTURE_PRESETS
from services.engine.scheduler.policy import DEFAULT_POLICY, PolicyName
from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.ngram_drafter import NgramConfig
from services.engine.spec.spec_config import DEFAULT_NUM_SPECULATIVE_TOKENS, SpeculativeConfig

DEFAULT_NGRAM = NgramConfig()


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


def _member(enum: type[StrEnum], name: str, value: object) -> StrEnum:
    """`value` as a member of `enum` (a member or its value); ValueError lists the valid values."""
    try:
        return enum(value)
    except ValueError:
        raise ValueError(f"{name} must be one of {[member.value for member in enum]}, got {value!r}") from None


@dataclass(frozen=True)
class EngineConfig:
    """Settings of one engine replica; ValueError names the bad field."""

    # Each field's flag (--field-name) is generated from its default and help (config_flags.py).
    host: str = setting("127.0.0.1", HOST_HELP)
    port: int = setting(50052, PORT_HELP)
    log_level: str = setting("INFO", LOG_LEVEL_HELP)
    drain_s: float = setting(5.0, DRAIN_HELP, flag="--drain-seconds")
    model: str = setting(
        DEFAULT_MODEL,
        f"{DEFAULT_MODEL} (installed by scripts/install.sh), {DUMMY_TINY_MODEL} (random weights, tests), "
        "dummy:<preset|hf dir> (random weights of a real architecture), or a local Hugging Face directory",
    )
    # stable id of this replica; its flag is added by from_args: absent, it is hostname-random
    engine_id: str = setting("engine-0", "stable replica id (default: hostname-random)", cli=False)
    dtype: Dtype = setting(
        Dtype.AUTO, "weights' dtype; auto = bfloat16 on CUDA and on CPUs with native bf16, else float32"
    )
    device: Device = setting(Device.AUTO, "auto = cuda when available")
    seed: int = setting(0, "seed of a random-weight model's weights (dummy-llama-tiny, dummy:...)")
    block_size_tokens: int = setting(16, "token positions per KV block", flag="--block-size")
    num_kv_blocks: int = setting(0, "blocks in the KV pool (0 = as many as --kv-cache-memory-mb holds)")
    kv_cache_memory_mb: int = setting(256, "KV pool size when --num-kv-blocks is 0, MiB")
    # int8 (per block and kv head scales, quantized on write) holds about twice the tokens of bf16 in the same MiB
    kv_cache_dtype: KvCacheDtype = setting(KvCacheDtype.AUTO, "KV pool element type; auto = the model's dtype")
    max_num_seqs: int = setting(64, "running batch size at most")
    max_num_batched_tokens: int = setting(512, "tokens per step at most (chunked-prefill budget)")
    max_model_len: int = setting(0, "prompt + output tokens at most (0 = the model's own context)")
    # (4,096 only turned overload into timeouts: a queue 60x the batch; the deadline check sheds what cannot
    # finish in time)
    max_waiting_requests: int = setting(1024, "admitted-but-not-finished requests at most; more is RESOURCE_EXHAUSTED")
    max_waiting_prompt_tokens: int = setting(
        262_144, "prompt tokens of the live requests at most; more is RESOURCE_EXHAUSTED"
    )
    deadline_admission_slack: float = setting(
        1.0, "reject a request at once when its predicted completion > this x its deadline's time left (0 = never)"
    )
    max_queue_wait_steps: float = setting(
        0.0,
        "reject a request at once when the running batch is full and no place frees for it within this many steps "
        "(1: the end of the step under way; 0 = never): under overload admitted requests start at once",
    )
    scheduler_policy: PolicyName = setting(
        DEFAULT_POLICY,
        "alise: shortest predicted remaining time; fcfs: vLLM-like; mlfq: FastServe-like; srpt-oracle: benchmarks only",
    )
    max_wait_s: float = setting(
        60.0, "starvation bound: a request that waited this long is promoted ahead of all others, seconds"
    )
    ttft_target_s: float = setting(
        1.0,
        "alise, srpt-oracle: a waiting request without a first token is served first (earliest deadline) from "
        "0.25 s before this many seconds after its arrival until then; set it to the TTFT bound of your SLO "
        "(inf = off)",
    )
    readmit_headroom_tokens: int | None = setting(
        None,
        "a preempted request is readmitted only while this many tokens per running request stay free in the KV "
        "pool (default: the policy's, alise and srpt-oracle 8, fcfs and mlfq 0 = as soon as it fits, as vLLM)",
        type=non_negative_int,
    )
    memory_address: str = setting("", "memory service host:port ('' = run without one)")
    cpu_threads: int = setting(
        0, "torch CPU threads (0 = half the cores, at least 1): more threads than free cores makes OpenMP spin"
    )
    enforce_eager: bool = setting(
        False, "run every step eagerly: no CUDA graphs for decode-only steps (CPU always runs eagerly)"
    )
    speculative: SpeculativeMethod = setting(
        SpeculativeMethod.OFF,
        "speculative decoding: ngram = prompt lookup drafts; early-exit = the model's first layers + a trained exit head",
    )
    num_speculative_tokens: int = setting(
        DEFAULT_NUM_SPECULATIVE_TOKENS, "draft tokens verified per decode step at most (k; 0 = ngram 16, early-exit 4)"
    )
    ngram_min: int = setting(DEFAULT_NGRAM.min_n, "n-gram drafting: shortest suffix matched in the request's tokens")
    ngram_max: int = setting(DEFAULT_NGRAM.max_n, "n-gram drafting: longest suffix matched (tried first)")
    early_exit_layer: int = setting(0, "early-exit drafting: decoder layers before the exit head (0 = best measured)")
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
        object.__setattr__(self, "kv_cache_dtype", _member(KvCacheDtype, "kv_cache_dtype", self.kv_cache_dtype))
        if self.kv_cache_dtype is KvCacheDtype.INT8 and self.memory_address:
            raise ValueError(
                "kv_cache_dtype int8 cannot be combined with memory_address: KV offload copies "
                "full-precision blocks only (use bf16/fp16/auto with the memory service)"
            )
        object.__setattr__(self, "scheduler_policy", _member(PolicyName, "scheduler_policy", self.scheduler_policy))
        object.__setattr__(self, "speculative", _member(SpeculativeMethod, "speculative", self.speculative))
        self.speculative_config()  # ValueError names a bad k, n-gram range or exit layer
        if not self.max_wait_s > 0:
            raise ValueError(f"max_wait_s must be > 0, got {self.max_wait_s}")
        if not self.ttft_target_s > 0:
            raise ValueError(f"ttft_target_s must be > 0 seconds (inf = off), got {self.ttft_target_s}")
        if self.readmit_headroom_tokens is not None and self.readmit_headroom_tokens < 0:
            raise ValueError(f"readmit_headroom_tokens must be >= 0, got {self.readmit_headroom_tokens}")
        for name in (
            "block_size_tokens",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_waiting_requests",
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
        if not self.max_queue_wait_steps >= 0:
            raise ValueError(f"max_queue_wait_steps must be >= 0, got {self.max_queue_wait_steps}")

    def speculative_config(self) -> SpeculativeConfig:
        return SpeculativeConfig(
            self.speculative,
            self.num_speculative_tokens,
            NgramConfig(self.ngram_min, self.ngram_max),
            self.early_exit_layer,
        )

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "EngineConfig":
        parser = argparse.ArgumentParser(prog="python -m services.engine", description=__doc__)
        add_config_flags(parser, cls)
        parser.add_argument("--engine-id", default="", help="stable replica id (default: hostname-random)")
        add_metrics_port_flag(parser, default_port=ENGINE_METRICS_PORT)
        add_tls_flags(parser)
        args = parser.parse_args(argv)
        return cls(
            **config_values(cls, args),
            engine_id=args.engine_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}",
            metrics_port=metrics_port_from_flag(args.metrics_port, default_port=ENGINE_METRICS_PORT),
            tls=tls_from_args(args),
        )
