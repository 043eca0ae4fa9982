"""What the engine and the memory service say to each other about swaps, as engine objects.

The offloader and the measurements speak these; swap_pb.py converts them to and from the
alise.v1 messages at the edge (memory_client.py), so protobuf never reaches the swap logic.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.engine.kv_offload.kv_codec import KvCodec


@dataclass(frozen=True)
class CodecCost:
    """One codec a victim's KV could be swapped in: its size and the engine's measured times."""

    codec: KvCodec
    size_bytes: int  # bytes the victim's KV takes in this codec
    swap_out_s: float  # encode + copy out, seconds; 0 = not measured yet (the service assumes its bandwidth)
    swap_in_s: float  # copy back + decode, seconds; 0 as above


@dataclass(frozen=True)
class SwapCandidate:
    """One victim of a preemption event, offered to the memory service's plan."""

    request_id: str
    num_kv_tokens: int  # tokens whose KV it holds (what recompute would feed again)
    recompute_s: float  # engine time to recompute that KV, seconds
    expected_wait_s: float  # expected time until it runs again, seconds
    codecs: tuple[CodecCost, ...]  # every codec the engine can produce


@dataclass(frozen=True)
class CodecQuality:
    """Measured error of one lossy codec on this engine's real KV."""

    codec: KvCodec
    relative_error: float  # mean ||x' - x|| / ||x||
    num_blocks_measured: int  # blocks the mean was taken over


@dataclass(frozen=True)
class SwapDecision:
    """The memory service's plan for one victim: swap it (in `codec`, into `slot_ids`) or not (recompute)."""

    request_id: str
    swap: bool  # False: its KV is dropped and recomputed on resume
    codec: KvCodec | None  # codec to write; None when not swapped
    slot_ids: tuple[int, ...]  # host slots reserved for the bytes, in order (swap only)


@dataclass(frozen=True)
class RestoreGrant:
    """Where a swapped request's bytes are, pinned for reading; restorable False = recompute it."""

    request_id: str
    restorable: bool
    codec: KvCodec | None  # None when not restorable
    slot_ids: tuple[int, ...]
    size_bytes: int
