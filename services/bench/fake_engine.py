"""A fast fake engine for gateway benchmarks: streams tokens as fast as gRPC carries them.

    python -m services.bench.fake_engine --port 0      (prints READY alise.v1.EngineService host:port)

It does no model work, so a benchmark against it measures the gateway (and the client) alone: the
gateway's HTTP overhead over gRPC, or how many tokens per second one stream can carry. Every
request gets `max_tokens` tokens, one per message, of one fixed id (a short word piece, so the
gateway's detokenizer and stop-string scan do their usual work per token).
"""

from __future__ import annotations

import argparse
import asyncio

from services.common.contracts import common_pb2, engine_service_pb2, engine_service_pb2_grpc
from services.common.logging_setup import configure_logging
from services.common.server import ServiceHandle, run_until_signal, start_server

TOKEN_ID = 272  # "▁the" in the default SentencePiece vocabulary
MAX_CONTEXT_TOKENS = 65_536
VOCAB_SIZE = 32_000
MODEL_NAME = "fast-fake"


class FastFakeEngine(engine_service_pb2_grpc.EngineServiceServicer):
    """Streams `max_tokens` tokens per request, then LENGTH; the default tokenizer."""

    async def Generate(self, request, context):  # noqa: N802 - gRPC method name
        message = engine_service_pb2.EngineServiceGenerateResponse(token_ids=[TOKEN_ID])
        for _ in range(request.sampling.max_tokens):
            yield message
        yield engine_service_pb2.EngineServiceGenerateResponse(finish_reason=common_pb2.FINISH_REASON_LENGTH)

    async def GetModelInfo(self, request, context):  # noqa: N802
        return engine_service_pb2.EngineServiceGetModelInfoResponse(
            model_name=MODEL_NAME,
            max_context_tokens=MAX_CONTEXT_TOKENS,
            vocab_size=VOCAB_SIZE,
            eos_token_id=2,
            tokenizer="default",
        )

    async def GetStats(self, request, context):  # noqa: N802 - the gateway polls it for routing
        return engine_service_pb2.EngineServiceGetStatsResponse(engine_id="fast-fake")


async def _serve(port: int) -> None:
    running = await start_server(
        host="127.0.0.1",
        port=port,
        service_names=["alise.v1.EngineService"],
        register=lambda server: engine_service_pb2_grpc.add_EngineServiceServicer_to_server(FastFakeEngine(), server),
    )
    await run_until_signal(ServiceHandle(running), grace_s=0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench.fake_engine", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    configure_logging("WARNING", "fake-engine")
    asyncio.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
