"""MemoryConfig: every setting of the memory service, built once at the entry point."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

from services.common.config_flags import add_config_flags, config_values, setting
from services.common.flags import DRAIN_HELP, HOST_HELP, LOG_LEVEL_HELP, PORT_HELP, validate_port
from services.common.metrics_server import (
    MEMORY_METRICS_PORT,
    MetricsPort,
    add_metrics_port_flag,
    metrics_port_from_flag,
)
from services.common.tls import TlsFiles, add_tls_flags, tls_from_args

DEFAULT_PORT = 50054
# Slot size of the host tier. A swapped request takes whole slots, so a slot is the waste per swap at
# worst: 256 KiB is 1/8 of one 16-token block of Mistral-7B in fp16 (2 MiB) and a few hundred tokens
# of the small default model's KV.
DEFAULT_HOST_TIER_BLOCK_BYTES = 256 * 1024
# 1 GiB of host memory for swapped KV. The region is a sparse tmpfs file: pages count only once written.
DEFAULT_HOST_TIER_CAPACITY_BYTES = 1024**3
# Relative Frobenius error a lossy KV codec may add: int8 (~0.5-1% on real KV) is within it, int4
# (~8-10%) is not, unless the operator raises it.
DEFAULT_MAX_KV_RELATIVE_ERROR = 0.02
# Host transfer rate assumed until an engine reports measured swap times (a CPU memcpy + codec).
DEFAULT_ASSUMED_TRANSFER_BYTES_PER_S = 2e9


@dataclass(frozen=True)
class MemoryConfig:
    """Settings of the memory service; validated on construction (ValueError names the field)."""

    # Each field's flag (--field-name) is generated from its default and help (config_flags.py).
    host: str = setting("127.0.0.1", HOST_HELP)
    port: int = setting(DEFAULT_PORT, PORT_HELP)
    log_level: str = setting("INFO", LOG_LEVEL_HELP)
    drain_s: float = setting(5.0, DRAIN_HELP, flag="--drain-seconds")
    host_tier_capacity_bytes: int = setting(
        DEFAULT_HOST_TIER_CAPACITY_BYTES,
        "host memory for swapped KV, shared by all engines, in bytes (0: every victim recomputes)",
    )
    host_tier_block_bytes: int = setting(
        DEFAULT_HOST_TIER_BLOCK_BYTES, "allocation unit (slot) of the host tier, in bytes"
    )
    host_tier_path: str = setting("", "file of the shared-memory region (default: a fresh file in /dev/shm)")
    max_kv_relative_error: float = setting(
        DEFAULT_MAX_KV_RELATIVE_ERROR, "relative error an int8/int4 swap may add to KV (measured by engines)"
    )
    assumed_transfer_bytes_per_s: float = setting(
        DEFAULT_ASSUMED_TRANSFER_BYTES_PER_S,
        "swap transfer rate assumed until engines report measured times, GB/s",
        flag="--assumed-transfer-gb-per-s",
        scale=1e9,
    )
    report_interval_s: float = setting(1.0, "how often engines should report usage, in seconds")
    stale_after_s: float = setting(10.0, "engines silent for longer are reported stale, in seconds")
    expire_after_s: float = setting(
        15.0,
        "engines silent for longer are unregistered: ledger entry and host slots released (a killed engine "
        "does not stay registered forever; a slow one registers again), in seconds",
    )
    # /metrics HTTP port on `host`; None = not served (the --metrics-port flag defaults to 9104)
    metrics_port: MetricsPort | None = None
    # TLS of its gRPC port; with a CA, clients (engines, gateways) must present a certificate of it
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        validate_port(self.port)
        if self.drain_s < 0:
            raise ValueError(f"drain_s must be >= 0, got {self.drain_s}")
        if self.host_tier_capacity_bytes < 0:
            raise ValueError(f"host_tier_capacity_bytes must be >= 0, got {self.host_tier_capacity_bytes}")
        if self.host_tier_block_bytes <= 0:
            raise ValueError(f"host_tier_block_bytes must be > 0, got {self.host_tier_block_bytes}")
        if self.max_kv_relative_error < 0:
            raise ValueError(f"max_kv_relative_error must be >= 0, got {self.max_kv_relative_error}")
        if self.assumed_transfer_bytes_per_s <= 0:
            raise ValueError(f"assumed_transfer_bytes_per_s must be > 0, got {self.assumed_transfer_bytes_per_s}")
        if self.report_interval_s <= 0:
            raise ValueError(f"report_interval_s must be > 0, got {self.report_interval_s}")
        if self.expire_after_s <= self.report_interval_s:
            raise ValueError(
                f"expire_after_s ({self.expire_after_s}) must exceed report_interval_s ({self.report_interval_s}), "
                "or live engines are expired between two reports"
            )
        if self.stale_after_s <= self.report_interval_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s}) must exceed report_interval_s "
                f"({self.report_interval_s}), or every engine looks stale between two reports"
            )

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> MemoryConfig:
        """Parses `python -m services.memory` flags; argparse exits with a message on bad flags."""
        parser = argparse.ArgumentParser(prog="python -m services.memory", description=__doc__)
        add_config_flags(parser, cls)
        add_metrics_port_flag(parser, default_port=MEMORY_METRICS_PORT)
        add_tls_flags(parser)
        args = parser.parse_args(argv)
        try:
            return cls(
                **config_values(cls, args),
                metrics_port=metrics_port_from_flag(args.metrics_port, default_port=MEMORY_METRICS_PORT),
                tls=tls_from_args(args),
            )
        except ValueError as error:
            parser.error(str(error))
