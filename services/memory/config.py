"""MemoryConfig: every setting of the memory service, built once at the entry point."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

from services.common.flags import add_server_flags, validate_port
from services.common.tls import TlsFiles, add_tls_flags, tls_from_args
from services.common.metrics_server import (
    MEMORY_METRICS_PORT,
    MetricsPort,
    add_metrics_port_flag,
    metrics_port_from_flag,
)

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

    host: str = "127.0.0.1"  # interface the gRPC server listens on
    port: int = DEFAULT_PORT  # TCP port; 0 = the OS picks a free one (tests)
    log_level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR
    drain_s: float = 5.0  # on SIGTERM, how long in-flight calls may finish
    host_tier_capacity_bytes: int = DEFAULT_HOST_TIER_CAPACITY_BYTES  # host memory for swapped KV; 0 = none
    host_tier_block_bytes: int = DEFAULT_HOST_TIER_BLOCK_BYTES  # allocation unit (slot) of the host tier
    host_tier_path: str = ""  # file of the shared region; "" = a fresh one under /dev/shm
    max_kv_relative_error: float = DEFAULT_MAX_KV_RELATIVE_ERROR  # error budget of int8 / int4 swaps
    assumed_transfer_bytes_per_s: float = DEFAULT_ASSUMED_TRANSFER_BYTES_PER_S  # until engines measure
    report_interval_s: float = 1.0  # how often engines are told to call ReportUsage
    stale_after_s: float = 10.0  # an engine silent longer than this is reported stale
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
        if self.stale_after_s <= self.report_interval_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s}) must exceed report_interval_s "
                f"({self.report_interval_s}), or every engine looks stale between two reports"
            )

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None) -> MemoryConfig:
        """Parses `python -m services.memory` flags; argparse exits with a message on bad flags."""
        parser = argparse.ArgumentParser(prog="python -m services.memory", description=__doc__)
        add_server_flags(parser, default_port=DEFAULT_PORT)
        add_metrics_port_flag(parser, default_port=MEMORY_METRICS_PORT)
        add_tls_flags(parser)
        parser.add_argument("--host-tier-capacity-bytes", type=int, default=DEFAULT_HOST_TIER_CAPACITY_BYTES,
                            help="host memory for swapped KV, shared by all engines, in bytes (0: every "
                                 "victim recomputes)")
        parser.add_argument("--host-tier-block-bytes", type=int, default=DEFAULT_HOST_TIER_BLOCK_BYTES,
                            help="allocation unit (slot) of the host tier, in bytes")
        parser.add_argument("--host-tier-path", default="",
                            help="file of the shared-memory region (default: a fresh file in /dev/shm)")
        parser.add_argument("--max-kv-relative-error", type=float, default=DEFAULT_MAX_KV_RELATIVE_ERROR,
                            help="relative error an int8/int4 swap may add to KV (measured by engines)")
        parser.add_argument("--assumed-transfer-gb-per-s", type=float,
                            default=DEFAULT_ASSUMED_TRANSFER_BYTES_PER_S / 1e9,
                            help="swap transfer rate assumed until engines report measured times, GB/s")
        parser.add_argument("--report-interval-s", type=float, default=1.0,
                            help="how often engines should report usage, in seconds")
        parser.add_argument("--stale-after-s", type=float, default=10.0,
                            help="engines silent for longer are reported stale, in seconds")
        args = parser.parse_args(argv)
        try:
            return cls(
                host=args.host,
                port=args.port,
                log_level=args.log_level,
                drain_s=args.drain_seconds,
                host_tier_capacity_bytes=args.host_tier_capacity_bytes,
                host_tier_block_bytes=args.host_tier_block_bytes,
                host_tier_path=args.host_tier_path,
                max_kv_relative_error=args.max_kv_relative_error,
                assumed_transfer_bytes_per_s=args.assumed_transfer_gb_per_s * 1e9,
                report_interval_s=args.report_interval_s,
                stale_after_s=args.stale_after_s,
                metrics_port=metrics_port_from_flag(args.metrics_port, default_port=MEMORY_METRICS_PORT),
                tls=tls_from_args(args),
            )
        except ValueError as error:
            parser.error(str(error))
