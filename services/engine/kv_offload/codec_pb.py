"""The engine's KvCodec <-> alise.v1.KvCodec (the edge where codecs cross the wire)."""

from services.common.contracts import memory_service_pb2 as pb
from services.engine.kv_offload.kv_codec import KvCodec

CODEC_TO_PB = {KvCodec.FULL: pb.KV_CODEC_FULL, KvCodec.INT8: pb.KV_CODEC_INT8, KvCodec.INT4: pb.KV_CODEC_INT4}
CODEC_FROM_PB = {value: codec for codec, value in CODEC_TO_PB.items()}
