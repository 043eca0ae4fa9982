"""Wires the gateway together: channels to its peers, the pipeline, the servicer, the server.

One long-lived channel per peer (engine, predictor) for the life of the process: opening a channel
per request would add a TCP + HTTP/2 handshake to every request. Channels connect lazily, so the
gateway starts even when its engine or predictor is down; reconnect backoff is kept short so a
restarted engine is picked up within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from services.common.contracts import gateway_service_pb2_grpc, predictor_service_pb2_grpc
from services.common.errors import NotReady
from services.common.server import GRPC_OPTIONS, ServiceHandle, start_server
from services.gateway.config import GatewayConfig
from services.gateway.engine_client import EngineClient
from services.gateway.generation import GenerationPipeline
from services.gateway.model_info import ServedModelCache
from services.gateway.prediction import OutputLengthEstimator
from services.gateway.servicer import SERVICE_NAME, GatewayServicer
from services.gateway.validation import RequestLimits

log = logging.getLogger(__name__)

CLIENT_CHANNEL_OPTIONS = (
    *GRPC_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


async def start(config: GatewayConfig) -> ServiceHandle:
    """Starts the gateway server; returns once it accepts calls (peers may still be down)."""
    engine_channel = grpc.aio.insecure_channel(config.engine_address, options=CLIENT_CHANNEL_OPTIONS)
    channels = [engine_channel]
    predictor_stub = None
    if config.predictor_address:
        predictor_channel = grpc.aio.insecure_channel(
            config.predictor_address, options=CLIENT_CHANNEL_OPTIONS
        )
        channels.append(predictor_channel)
        predictor_stub = predictor_service_pb2_grpc.PredictorServiceStub(predictor_channel)
    engine = EngineClient(engine_channel, config.engine_address)
    served_models = ServedModelCache(
        lambda: engine.get_model_info(config.model_info_timeout_s),
        tokenizer_override=config.tokenizer,
        retry_interval_s=config.model_info_retry_interval_s,
        engine_address=config.engine_address,
    )
    servicer = _build_servicer(config, engine, served_models, predictor_stub)
    add_servicer = gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server
    running = await start_server(
        host=config.host,
        port=config.port,
        register=lambda server: add_servicer(servicer, server),
        service_names=[SERVICE_NAME],
    )
    warm_up = asyncio.create_task(_warm_up(served_models), name="gateway-model-info-warm-up")
    return ServiceHandle(running, on_stop=[lambda: _cancel(warm_up), lambda: _close(channels)])


def _build_servicer(
    config: GatewayConfig,
    engine: EngineClient,
    served_models: ServedModelCache,
    predictor_stub: predictor_service_pb2_grpc.PredictorServiceStub | None,
) -> GatewayServicer:
    """Hands each component only the config fields it needs."""
    estimator = OutputLengthEstimator(
        predictor_stub,
        timeout_s=config.predictor_timeout_s,
        fallback_output_tokens=config.fallback_output_tokens,
    )
    limits = RequestLimits(
        default_max_tokens=config.default_max_tokens,
        max_stop_strings=config.max_stop_strings,
        max_stop_string_chars=config.max_stop_string_chars,
        max_request_id_chars=config.max_request_id_chars,
    )
    return GatewayServicer(
        GenerationPipeline(served_models, estimator, engine, limits),
        served_models,
        max_stop_strings=config.max_stop_strings,
    )


async def _warm_up(served_models: ServedModelCache) -> None:
    """Fetches model info and loads the tokenizer once at start, so the first request does not wait."""
    try:
        await served_models.get()
    except NotReady as error:
        log.warning("%s (will retry on the next request)", error)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _close(channels: list[grpc.aio.Channel]) -> None:
    for channel in channels:
        await channel.close()
