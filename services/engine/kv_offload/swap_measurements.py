"""What the engine measures about its own swaps, for the memory service's decisions and the stats.

- Transfer cost per codec, as seconds per encoded byte (exponential moving averages): swap out
  (encode + write), read back, decode. Until measured, the engine reports 0 and the memory
  service assumes its configured bandwidth.
- Error of the lossy codecs on this engine's real KV: the first MEASURE_FIRST_EVENTS evictions and
  then every MEASURE_EVERY-th are measured on up to MEASURE_MAX_BLOCKS of the first victim's blocks
  (a round trip of int8 and int4 each; ~25 ms of CPU per MiB, so the sample is kept small), so the
  memory service's error budget judges measured figures, and int4 gets measured even while full
  precision is what is being used.

Updated from the engine thread and (reads) the prefetch thread: plain float assignments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.engine.kv_cache import PagedKvCache
from services.engine.kv_offload.kv_codec import KvCodec, measure_codec_errors
from services.engine.kv_offload.swap_plan import CodecQuality

SMOOTHING = 0.2  # weight of the newest sample in the moving averages
MEASURE_FIRST_EVENTS = 8
MEASURE_EVERY = 16
MEASURE_MAX_BLOCKS = 4


def _smoothed(previous: float, sample: float) -> float:
    return sample if previous == 0.0 else (1 - SMOOTHING) * previous + SMOOTHING * sample


@dataclass
class SwapMeasurements:
    """Moving averages per codec, error figures and counters."""

    out_s_per_byte: dict[KvCodec, float] = field(default_factory=lambda: dict.fromkeys(KvCodec, 0.0))
    read_s_per_byte: dict[KvCodec, float] = field(default_factory=lambda: dict.fromkeys(KvCodec, 0.0))
    decode_s_per_byte: dict[KvCodec, float] = field(default_factory=lambda: dict.fromkeys(KvCodec, 0.0))
    relative_error: dict[KvCodec, float] = field(default_factory=dict)  # lossy codecs, once measured
    num_error_blocks: dict[KvCodec, int] = field(default_factory=lambda: dict.fromkeys(KvCodec, 0))
    num_events: int = 0  # evictions seen
    num_swapped_out: dict[KvCodec, int] = field(default_factory=lambda: dict.fromkeys(KvCodec, 0))
    num_bytes_out: int = 0  # encoded bytes written to the host tier
    num_bytes_in: int = 0  # encoded bytes read back
    num_restores_lost: int = 0  # swapped requests that had to recompute after all

    def record_out(self, codec: KvCodec, num_bytes: int, seconds: float) -> None:
        self.out_s_per_byte[codec] = _smoothed(self.out_s_per_byte[codec], seconds / max(1, num_bytes))
        self.num_swapped_out[codec] += 1
        self.num_bytes_out += num_bytes

    def record_in(self, codec: KvCodec, num_bytes: int, seconds: float) -> None:
        self.read_s_per_byte[codec] = _smoothed(self.read_s_per_byte[codec], seconds / max(1, num_bytes))
        self.num_bytes_in += num_bytes

    def record_decode(self, codec: KvCodec, num_bytes: int, seconds: float) -> None:
        self.decode_s_per_byte[codec] = _smoothed(self.decode_s_per_byte[codec], seconds / max(1, num_bytes))

    def estimate_s(self, codec: KvCodec, num_bytes: int) -> tuple[float, float]:
        """(swap out, swap in) seconds for num_bytes in codec; 0 where not measured yet."""
        out_s = self.out_s_per_byte[codec] * num_bytes
        read, decode = self.read_s_per_byte[codec], self.decode_s_per_byte[codec]
        in_s = (read + decode) * num_bytes if read and decode else 0.0
        return out_s, in_s

    def maybe_measure_errors(self, cache: PagedKvCache, block_ids: list[int]) -> None:
        """Measures the lossy codecs' error on these blocks on the sampled events."""
        self.num_events += 1
        sampled = self.num_events <= MEASURE_FIRST_EVENTS or self.num_events % MEASURE_EVERY == 0
        if not sampled or not block_ids:
            return
        block_ids = block_ids[:MEASURE_MAX_BLOCKS]
        for codec, error in measure_codec_errors(cache, block_ids).items():
            if codec is KvCodec.FULL:
                continue
            count = self.num_error_blocks[codec]
            # A running mean over measured blocks: every block counts the same.
            self.relative_error[codec] = (self.relative_error.get(codec, 0.0) * count + error * len(block_ids)) / (
                count + len(block_ids)
            )
            self.num_error_blocks[codec] = count + len(block_ids)

    def qualities(self) -> list[CodecQuality]:
        return [
            CodecQuality(codec, error, self.num_error_blocks[codec]) for codec, error in self.relative_error.items()
        ]
