"""How a generation ended, as the gateway's own objects (FinishSummary carries these, not protobuf).

finish_pb.py converts them at the edges: from the engine's messages, to the client's response and
to the predictor's feedback report.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FinishReason(StrEnum):
    """Why a generation ended; a member's value is its `finished_reason` metric label."""

    EOS = "eos"  # the model produced its end-of-sequence token
    STOP = "stop"  # a stop string matched (the gateway ended the call)
    LENGTH = "length"  # max_tokens or the model's context was reached
    ABORTED = "aborted"  # the engine aborted it


@dataclass(frozen=True)
class Timings:
    """Latencies of one generation, seconds (the engine's, or the gateway's own when it ended the call)."""

    queue_time_s: float = 0.0  # known inside the engine only; 0 when the gateway ended the call
    time_to_first_token_s: float = 0.0
    end_to_end_s: float = 0.0
    num_preemptions: int = 0  # known inside the engine only
