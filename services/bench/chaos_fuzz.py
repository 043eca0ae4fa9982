"""Fuzzing every public gRPC method: messages drawn from their descriptors, mutated bytes, raw bytes.

    descriptor --message_strategy--> random but well-typed messages (every field kind, nested,
                                     repeated, unknown enum numbers, NaN and infinities, odd text)
    valid bytes --mutated_bytes-->    bit flips, truncation, insertion (often not a message at all)
    st.binary()                       raw random bytes

Calls go over a raw channel (bytes in, bytes out), so undecodable requests reach the server as
sent. A call passes when it ends OK or with a deliberate status; INTERNAL (a bug caught by the
status mapping), UNKNOWN (an exception that escaped it) and no answer within the timeout fail.
Streaming responses are read to their first message and then cancelled, which bounds each case.
The stack runs on a thread of its own (`ThreadedStack`), so tests drive it with plain calls.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from services.bench.chaos_stack import ChaosStack, ChaosStackConfig

FAILING_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
MAX_DEPTH = 3  # nested messages deeper than this are left unset
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _small_or_any(low: int, high: int) -> st.SearchStrategy[int]:
    """Mostly small values (ids, counts, token ids), sometimes the type's extremes."""
    return st.one_of(st.integers(max(low, -4), min(high, 70_000)), st.integers(low, high), st.sampled_from([low, high]))


def _scalar_strategy(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    kind = field.type
    if kind in _INT_RANGES:
        return _small_or_any(*_INT_RANGES[kind])
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=64)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=256)
    if kind == FieldDescriptor.TYPE_ENUM:
        numbers = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-3, 1000))  # open enums: unknown numbers arrive
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(field.message_type, depth + 1)
    raise ValueError(f"unhandled field type {kind} of {field.full_name}")


def message_strategy(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy:
    """Messages of `descriptor` with any subset of fields set to any value of their type."""
    message_class = GetMessageClass(descriptor)
    if depth > MAX_DEPTH:
        return st.just(message_class())
    fields = {}
    for field in descriptor.fields:
        value = _scalar_strategy(field, depth)
        if field.is_repeated:
            fields[field.name] = st.lists(value, max_size=6)
        else:
            fields[field.name] = st.none() | value
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(message_class, values))


def _build(message_class, values: dict):
    message = message_class()
    for name, value in values.items():
        if value is None:
            continue
        field = message_class.DESCRIPTOR.fields_by_name[name]
        if field.is_repeated:
            getattr(message, name).extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


def mutated_bytes(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """A valid message's bytes with random edits: flips, truncation, insertion."""

    @st.composite
    def mutate(draw) -> bytes:
        data = bytearray(draw(message_strategy(descriptor)).SerializeToString())
        for _ in range(draw(st.integers(1, 4))):
            edit = draw(st.sampled_from(("flip", "truncate", "insert")))
            if edit == "flip" and data:
                index = draw(st.integers(0, len(data) - 1))
                data[index] ^= draw(st.integers(1, 255))
            elif edit == "truncate" and data:
                del data[draw(st.integers(0, len(data) - 1)) :]
            else:
                index = draw(st.integers(0, len(data)))
                data[index:index] = draw(st.binary(min_size=1, max_size=8))
        return bytes(data)

    return mutate()


def any_request_bytes(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Well-typed messages, mutated messages and raw bytes, in equal parts."""
    return st.one_of(
        message_strategy(descriptor).map(lambda message: message.SerializeToString()),
        mutated_bytes(descriptor),
        st.binary(max_size=512),
    )


@dataclass(frozen=True)
class FuzzTarget:
    """One public method of one service."""

    service: str  # e.g. "engine-0", "gateway"
    address: str  # host:port
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    def __str__(self) -> str:
        return f"{self.service}:{self.method.name}"


def call_raw(channel: grpc.Channel, target: FuzzTarget, payload: bytes, timeout_s: float) -> grpc.StatusCode:
    """Sends `payload` as the request (a stream request sends it twice); returns the final status."""
    method = target.method
    identity = {"request_serializer": None, "response_deserializer": None}
    try:
        if method.client_streaming and method.server_streaming:
            call = channel.stream_stream(target.path, **identity)(iter([payload, payload]), timeout=timeout_s)
            return _first_then_cancel(call)
        if method.client_streaming:
            channel.stream_unary(target.path, **identity)(iter([payload, payload]), timeout=timeout_s)
            return grpc.StatusCode.OK
        if method.server_streaming:
            return _first_then_cancel(channel.unary_stream(target.path, **identity)(payload, timeout=timeout_s))
        channel.unary_unary(target.path, **identity)(payload, timeout=timeout_s)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def _first_then_cancel(call) -> grpc.StatusCode:
    try:
        next(call)
    except StopIteration:
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()
    call.cancel()
    return grpc.StatusCode.OK


class ThreadedStack:
    """A ChaosStack whose event loop runs on its own thread (for synchronous tests and fuzzers)."""

    def __init__(self, config: ChaosStackConfig) -> None:
        self.stack = ChaosStack(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-stack", daemon=True)

    def run(self, coroutine, timeout_s: float = 300.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def start(self) -> "ThreadedStack":
        self._thread.start()
        self.run(self.stack.start())
        return self

    def stop(self) -> None:
        try:
            self.run(self.stack.stop(), timeout_s=60.0)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
