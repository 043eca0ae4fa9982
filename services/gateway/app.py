"""Wires the gateway together: pools of its peers, the pipeline, the gRPC servicer and server, and
the OpenAI-compatible HTTP server (services/gateway/http) on the same pipeline, in the same loop.

One long-lived channel per peer replica (each engine, each predictor) for the life of the process:
opening a channel per request would add a TCP + HTTP/2 handshake to every request. Channels connect
lazily, so the gateway starts even when its engines or predictors are down; reconnect backoff is
kept short so a restarted engine is picked up within about a second. Replicas are found and checked
by the pools (peers.py, engine_pool.py, predictor_pool.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from dataclasses import dataclass
from typing import Callable

import grpc
from prometheus_client import CollectorRegistry

from services.common.contracts import gateway_service_pb2_grpc
from services.common.errors import NotReady
from services.common.server import GRPC_OPTIONS, ServiceHandle, start_server
from services.common.tls import TlsFiles, secure_or_insecure_channel
from services.gateway.admission import InFlightLimit
from services.gateway.auth import ApiKeyInterceptor, ApiKeys
from services.gateway.config import GatewayConfig
from services.gateway.engine_pool import EnginePool
from services.gateway.feedback import FeedbackReporter
from services.gateway.generation import GenerationPipeline
from services.gateway.http.app import HttpAppSettings, create_http_app
from services.gateway.http.server import HttpServer, start_http_server
from services.gateway.metrics import GatewayMetrics
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
    http: HttpServer | None = None  # the OpenAI-compatible HTTP server
    metrics: GatewayMetrics | None = None  # what /metrics on the HTTP port serves
    draining: bool = False  # set by stop(); GET /health then answers 503

    @property
    def http_url(self) -> str:
        """Base URL of the HTTP API, e.g. http://127.0.0.1:8000 (the OpenAI SDK's base_url + "/v1")."""
        assert self.http is not None, "no HTTP server"
        return self.http.url

    async def stop(self, grace_s: float = 0.0) -> None:
        """Drains gRPC and HTTP together for up to grace_s, then closes the peers."""
        self.draining = True
        draining = [self.running.stop(grace_s)] + ([self.http.stop(grace_s)] if self.http else [])
        await asyncio.gather(*draining)
        for clean_up in self.on_stop:
            await clean_up()


def _channel_factory(tls: TlsFiles | None) -> Callable[[str], grpc.aio.Channel]:
    """Channels to engines and predictors: mutual TLS when a CA is given (--tls-ca), else plaintext.

    --tls-cert/--tls-key alone secure the public ports only (TLS ending at the gateway).
    """
    if tls is not None and not tls.verifies_peers:
        tls = None

    def make_channel(address: str) -> grpc.aio.Channel:
        return secure_or_insecure_channel(address, tls, CLIENT_CHANNEL_OPTIONS)

    return make_channel


async def start(
    config: GatewayConfig, *, metrics_registry: CollectorRegistry | None = None, freeze_heap: bool = False
) -> GatewayHandle:
    """Starts the gateway's gRPC and HTTP servers; returns once both accept calls (peers may be down).

    The gateway's metrics (services/gateway/metrics.py) are served at the HTTP port's /metrics;
    metrics_registry: the prometheus_client registry they go into (None = a fresh one).
    freeze_heap: once the tokenizer is loaded, move every object alive then out of the garbage
    collector's reach (gc.freeze). For the gateway's own process only: ~70,000 objects of imports,
    tokenizer and servers that a full collection otherwise walks again and again, stalling the event
    loop 70-140 ms each time under overload (measured at 20x capacity), and with it every call.
    """
    api_keys = ApiKeys.load(config.api_keys, config.api_key_file)
    peers = build_peers(config, _channel_factory(config.tls))
    await peers.start()
    metrics = GatewayMetrics(metrics_registry)
    metrics.watch_peers(peers, asyncio.get_running_loop())
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
    pipeline = _build_pipeline(config, engine, served_models, predictor_stub, feedback, metrics)
    try:
        handle = await _start_servers(config, pipeline, served_models, api_keys, peers, metrics)
    except BaseException:
        if feedback is not None:
            await feedback.close()
        await peers.close()  # no health-check task may outlive a gateway that failed to start
        raise
    warm_up = asyncio.create_task(_warm_up(served_models, freeze_heap), name="gateway-model-info-warm-up")
    handle.on_stop = [lambda: _cancel(warm_up)] + ([feedback.close] if feedback is not None else []) + [peers.close]
    return handle


async def _start_servers(
    config: GatewayConfig,
    pipeline: GenerationPipeline,
    served_models: ServedModelCache,
    api_keys: ApiKeys,
    peers: GatewayPeers,
    metrics: GatewayMetrics,
) -> GatewayHandle:
    """The gRPC server, then the HTTP server on the same pipeline; neither is left running on failure."""
    servicer = GatewayServicer(pipeline, served_models, max_stop_strings=config.max_stop_strings)
    add_servicer = gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server
    running = await start_server(
        host=config.host,
        port=config.port,
        register=lambda server: add_servicer(servicer, server),
        service_names=[SERVICE_NAME],
        tls=config.tls,
        interceptors=[ApiKeyInterceptor(api_keys)] if api_keys.enabled else [],
        # a client request larger than the HTTP body limit is refused by gRPC before any Python object exists
        max_receive_message_bytes=config.http_max_request_bytes,
    )
    handle = GatewayHandle(running, peers=peers, metrics=metrics)
    http_app = create_http_app(
        pipeline,
        served_models,
        HttpAppSettings(
            config.http_max_request_bytes,
            config.metrics_require_api_key,
            config.http_request_timeout_s,
            config.http_body_timeout_s,
        ),
        api_keys=api_keys,
        metrics_registry=metrics.registry,
        is_serving=lambda: not handle.draining,
    )
    try:
        handle.http = await start_http_server(http_app, host=config.host, port=config.http_listen_port, tls=config.tls)
    except BaseException:
        await running.stop(0)
        raise
    return handle


def _build_pipeline(
    config: GatewayConfig,
    engine: EnginePool,
    served_models: ServedModelCache,
    predictor_stub: object | None,
    feedback: FeedbackReporter | None = None,
    metrics: GatewayMetrics | None = None,
) -> GenerationPipeline:
    """The one generation path both APIs (gRPC and HTTP) call; hands each part only its config."""
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
    admission = InFlightLimit(config.max_in_flight_requests, config.max_in_flight_request_bytes)
    return GenerationPipeline(served_models, estimator, engine, limits, feedback, metrics, admission)


async def _warm_up(served_models: ServedModelCache, freeze_heap: bool) -> None:
    """Fetches model info and loads the tokenizer once at start, so the first request does not wait;
    then, with freeze_heap, freezes what is alive (see start)."""
    try:
        await served_models.get()
    except NotReady as error:
        log.warning("%s (will retry on the next request)", error)
    if freeze_heap:
        gc.collect()  # garbage of the start-up is freed, not frozen
        gc.freeze()
        log.info("froze %d objects of the start-up out of the garbage collector's reach", gc.get_freeze_count())


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
