"""Client-side timing of one token stream, shared by `alise generate` and `alise bench stack`.

Times are taken on the client with time.perf_counter(), from just before the call is created (a
grpc.aio call starts when it is created) to the first message carrying tokens (TTFT) and to the
end of the stream (end-to-end), so gateway and engine are measured the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Generic, TypeVar

Message = TypeVar("Message")


@dataclass
class StreamTiming(Generic[Message]):
    """What one finished stream delivered and when."""

    num_tokens: int  # token ids received over the whole stream
    time_to_first_token_s: float | None  # until the first message with tokens; None if none came
    end_to_end_s: float  # until the stream ended
    last_message: Message | None  # the final message (finish reason, usage, ...), None if empty

    @property
    def tokens_per_s(self) -> float:
        """Tokens received per second of end-to-end time (0 for an empty stream)."""
        return self.num_tokens / self.end_to_end_s if self.end_to_end_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after the first per second after the first: the streaming rate without prefill."""
        if self.time_to_first_token_s is None or self.num_tokens < 2:
            return None
        decode_s = self.end_to_end_s - self.time_to_first_token_s
        return (self.num_tokens - 1) / decode_s if decode_s > 0 else None


async def timed_stream(
    start_call: Callable[[], AsyncIterator[Any]],
    on_message: Callable[[Any], None] | None = None,
) -> StreamTiming[Any]:
    """Starts the call, reads it to the end, and times it; gRPC errors propagate as AioRpcError."""
    began_s = time.perf_counter()
    first_token_s: float | None = None
    num_tokens = 0
    last_message = None
    async for message in start_call():
        if message.token_ids and first_token_s is None:
            first_token_s = time.perf_counter() - began_s
        num_tokens += len(message.token_ids)
        last_message = message
        if on_message is not None:
            on_message(message)
    return StreamTiming(num_tokens, first_token_s, time.perf_counter() - began_s, last_message)
