"""The edge where FinishReason and Timings (finish.py) cross the wire as alise.v1 common messages."""

from __future__ import annotations

from services.common.contracts import common_pb2
from services.gateway.finish import FinishReason, Timings

_TO_PB = {
    FinishReason.EOS: common_pb2.FINISH_REASON_EOS,
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORTED: common_pb2.FINISH_REASON_ABORTED,
}
_FROM_PB = {value: reason for reason, value in _TO_PB.items()}


def finish_reason_to_pb(reason: FinishReason) -> common_pb2.FinishReason.ValueType:
    return _TO_PB[reason]


def finish_reason_from_pb(value: int) -> FinishReason:
    """The engine's final message's reason; an unknown value (a newer engine) counts as ABORTED."""
    return _FROM_PB.get(value, FinishReason.ABORTED)  # type: ignore[call-overload]  # a plain int looks up


def timings_to_pb(timings: Timings) -> common_pb2.Timings:
    return common_pb2.Timings(
        queue_time_s=timings.queue_time_s,
        time_to_first_token_s=timings.time_to_first_token_s,
        end_to_end_s=timings.end_to_end_s,
        num_preemptions=timings.num_preemptions,
    )


def timings_from_pb(timings: common_pb2.Timings) -> Timings:
    return Timings(timings.queue_time_s, timings.time_to_first_token_s, timings.end_to_end_s, timings.num_preemptions)
