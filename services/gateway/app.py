"""Wires the gateway together: pools of its peers, the pipeline, the servicer, the server.

One long-lived channel per peer replica (each engine, each predictor) for the life of the process:
opening a channel per request would add a TCP + HTTP/2 handshake to every request. Channels connect
lazily, so the gateway starts even when its engines or predictors are down; reconnect backoff is
kept short so a restarted engine is picked up within about a second. Replicas are found and checked
by the pools (peers.py, engine_pool.py, predictor_pool.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc

from services.common.contracts import gateway_service_pb2_grpc
from services.common.errors import NotReady
from services.common.server import GRPC_OPTIONS, ServiceHandle, start_server
from services.gateway.config import GatewayConfig
from services.gateway.engine_pool import EnginePool
from services.gateway.feedback import FeedbackReporter
from services.gateway.generation import GenerationPipeline
from services.gateway.model_info import ServedModelCache
from services.gateway.peers import GatewayPeers, build_peers
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


@dataclass
class GatewayHandle(ServiceHandle):
    """A running gateway; `peers` exposes its replica pools (tests and benchmarks read their reports)."""

    peers: GatewayPeers | None = None  # the engine and predictor pools


def _client_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CLIENT_CHANNEL_OPTIONS)


async def start(config: GatewayConfig) -> GatewayHandle:
    """Starts the gateway server; returns once it accepts calls (peers may still be down)."""
    peers = build_peers(config, _client_channel)
    await peers.start()
    engine = peers.engines
    predictor_stub = peers.predictor_stub
    served_models = ServedModelCache(
        lambda: engine.get_model_info(config.model_info_timeout_s),
        tokenizer_override=config.tokenizer,
        retry_interval_s=config.model_info_retry_interval_s,
        engine_address=config.engine_address,
    )
    feedback = None  # finished requests are reported to the predictor (feedback.py)
    if predictor_stub is not None and config.feedback_queue_size > 0:
        feedback = FeedbackReporter(predictor_stub, queue_size=config.feedback_queue_size)
        feedback.start()
    servicer = _build_servicer(config, engine, served_models, predictor_stub, feedback)
    add_servicer = gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server
    try:
        running = await start_server(
            host=config.host,
            port=config.port,
            register=lambda server: add_servicer(servicer, server),
            service_names=[SERVICE_NAME],
        )
    except BaseException:
        if feedback is not None:
            await feedback.close()
        await peers.close()  # no health-check task may outlive a gateway that failed to start
        raise
    warm_up = asyncio.create_task(_warm_up(served_models), name="gateway-model-info-warm-up")
    on_stop = [lambda: _cancel(warm_up)] + ([feedback.close] if feedback is not None else []) + [peers.close]
    return GatewayHandle(running, on_stop=on_stop, peers=peers)


def _build_servicer(
    config: GatewayConfig,
    engine: EnginePool,
    served_models: ServedModelCache,
    predictor_stub: object | None,
    feedback: FeedbackReporter | None = None,
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
        GenerationPipeline(served_models, estimator, engine, limits, feedback),
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

