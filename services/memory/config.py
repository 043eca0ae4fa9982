"""MemoryConfig: every setting of the memory service, built once at the entry point."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

from services.common.flags import add_server_flags, validate_port

DEFAULT_PORT = 50054
# One 16-token block of Mistral-7B in fp16 (32 layers x K,V x 8 KV heads x 128 x 2 bytes x 16 tokens).
DEFAULT_HOST_TIER_BLOCK_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class MemoryConfig:
    """Settings of the memory service; validated on construction (ValueError names the field)."""

    host: str = "127.0.0.1"  # interface the gRPC server listens on
    port: int = DEFAULT_PORT  # TCP port; 0 = the OS picks a free one (tests)
    log_level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR
    drain_s: float = 5.0  # on SIGTERM, how long in-flight calls may finish
    host_tier_capacity_bytes: int = 0  # host memory for swapped KV; 0 until swapping lands
    host_tier_block_bytes: int = DEFAULT_HOST_TIER_BLOCK_BYTES  # allocation unit of the host tier
    report_interval_s: float = 1.0  # how often engines are told to call ReportUsage
    stale_after_s: float = 10.0  # an engine silent longer than this is reported stale

    def __post_init__(self) -> None:
        validate_port(self.port)
        if self.drain_s < 0:
            raise ValueError(f"drain_s must be >= 0, got {self.drain_s}")
        if self.host_tier_capacity_bytes < 0:
            raise ValueError(f"host_tier_capacity_bytes must be >= 0, got {self.host_tier_capacity_bytes}")
        if self.host_tier_block_bytes <= 0:
            raise ValueError(f"host_tier_block_bytes must be > 0, got {self.host_tier_block_bytes}")
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
        parser.add_argument("--host-tier-capacity-bytes", type=int, default=0,
                            help="host memory for swapped KV, in bytes (default 0: no host tier yet)")
        parser.add_argument("--host-tier-block-bytes", type=int, default=DEFAULT_HOST_TIER_BLOCK_BYTES,
                            help="allocation unit of the host tier, in bytes")
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
                report_interval_s=args.report_interval_s,
                stale_after_s=args.stale_after_s,
            )
        except ValueError as error:
            parser.error(str(error))
