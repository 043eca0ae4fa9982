"""Why a request was refused, in a form a program can read: the `alise-refusal-reason` metadata.

A refusal's status code (RESOURCE_EXHAUSTED, UNAVAILABLE) says "not now" but not why, and the
message is prose: a gateway or client that must choose between "retry elsewhere at once" (the
replica drains), "retry later" (its queue is full), "ask for a longer deadline" and "never retry
this request here" (larger than the KV cache) would have to parse text. So every refusal also
carries one trailing metadata entry:

    gRPC   trailing metadata  alise-refusal-reason: REFUSAL_REASON_QUEUE_FULL
    HTTP   header             alise-refusal-reason: REFUSAL_REASON_QUEUE_FULL
           error body         {"error": {..., "code": "queue_full"}}

The values are the names of the proto enum `alise.v1.RefusalReason` (protos/alise/v1/common.proto);
this module holds them as a plain enum so that domain code raises them without protobuf, and a test
checks the two lists are the same. Unknown values (a newer peer) read as None, never an error.
"""

from __future__ import annotations

import enum
from typing import Iterable

REFUSAL_REASON_KEY = "alise-refusal-reason"  # gRPC metadata keys are lower-case; the HTTP header too
_PROTO_PREFIX = "REFUSAL_REASON_"


class RefusalReason(enum.Enum):
    """One value per `alise.v1.RefusalReason` (UNSPECIFIED excepted: no entry is sent then)."""

    QUEUE_FULL = "REFUSAL_REASON_QUEUE_FULL"  # a queue cap is reached: retry later or elsewhere
    DEADLINE_UNMEETABLE = "REFUSAL_REASON_DEADLINE_UNMEETABLE"  # predicted completion is past the deadline
    DRAINING = "REFUSAL_REASON_DRAINING"  # the service shuts down: retry on another replica
    EXCEEDS_KV_CAPACITY = "REFUSAL_REASON_EXCEEDS_KV_CAPACITY"  # can never run on this engine
    QUEUED_WORK_LIMIT = "REFUSAL_REASON_QUEUED_WORK_LIMIT"  # gateway's --max-queued-work-s bound

    @property
    def openai_code(self) -> str:
        """The OpenAI error body's `code`: the name lower-cased without its prefix ("queue_full")."""
        return self.value.removeprefix(_PROTO_PREFIX).lower()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The trailing metadata entry that carries this reason."""
        return ((REFUSAL_REASON_KEY, self.value),)


_BY_VALUE = {reason.value: reason for reason in RefusalReason}


def parse_refusal_reason(value: str | bytes | None) -> RefusalReason | None:
    """The reason named by a metadata or header value; None when absent or not a known name."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return _BY_VALUE.get(value) if value else None


def refusal_reason_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> RefusalReason | None:
    """The reason in a call's trailing metadata (grpc.aio.Metadata or pairs), or None."""
    for key, value in metadata or ():
        if key == REFUSAL_REASON_KEY:
            return parse_refusal_reason(value)
    return None
