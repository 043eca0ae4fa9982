"""The generated protobuf/gRPC modules, regenerated first if the .proto files changed.

Every service imports contracts from here (`from services.common.contracts import pb, rpc`), never
from another service: the .proto files are the only coupling between services.
"""

from __future__ import annotations

from services.common import codegen

if codegen.is_stale():
    codegen.generate()

from alise.v1 import common_pb2  # noqa: E402
from alise.v1 import engine_service_pb2, engine_service_pb2_grpc  # noqa: E402
from alise.v1 import gateway_service_pb2, gateway_service_pb2_grpc  # noqa: E402
from alise.v1 import memory_service_pb2, memory_service_pb2_grpc  # noqa: E402
from alise.v1 import predictor_service_pb2, predictor_service_pb2_grpc  # noqa: E402

__all__ = [
    "common_pb2",
    "engine_service_pb2",
    "engine_service_pb2_grpc",
    "gateway_service_pb2",
    "gateway_service_pb2_grpc",
    "memory_service_pb2",
    "memory_service_pb2_grpc",
    "predictor_service_pb2",
    "predictor_service_pb2_grpc",
]
