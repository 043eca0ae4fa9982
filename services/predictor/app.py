"""Starting the predictor service: load the model, start batcher and file watcher, serve gRPC."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from services.common.contracts import predictor_service_pb2_grpc
from services.common.metrics_server import serve_metrics
from services.common.server import ServiceHandle, start_server
from services.predictor.batcher import MicroBatcher
from services.predictor.config import PredictorConfig
from services.predictor.feedback_intake import FeedbackIntake
from services.predictor.feedback_store import FeedbackStore
from services.predictor.live_accuracy import LiveAccuracyWindow
from services.predictor.prometheus_metrics import PredictorMetrics
from services.predictor.reload import LoadSettings, ModelHolder, PredictorLoader
from services.predictor.servicer import SERVICE_NAME, PredictorServicer


@dataclass
class PredictorHandle(ServiceHandle):
    """A running predictor; tests reach its model holder and batcher through it."""

    holder: ModelHolder | None = None  # the model serving now (reload counters)
    batcher: MicroBatcher | None = None  # the micro-batcher (batch counters)


def _load_settings(config: PredictorConfig) -> LoadSettings:
    return LoadSettings(
        model_dir=config.model_dir,
        cache_dir=config.resolved_cache_dir,
        tree_threads=config.intra_op_threads,
        embedding_threads=config.embedding_threads,
        allow_cuda=config.allow_cuda,
        default_generator=config.default_generator,
        lone_prompt_threads=config.lone_prompt_threads,
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def start(config: PredictorConfig) -> PredictorHandle:
    """A serving predictor (tests use port 0); `await handle.stop()` shuts it down."""
    holder = await ModelHolder.open(PredictorLoader(_load_settings(config)))
    store = FeedbackStore(config.feedback_dir) if config.feedback_dir is not None else None
    intake = FeedbackIntake(LiveAccuracyWindow(config.live_window_size), store)
    metrics = PredictorMetrics()
    batcher = MicroBatcher(metrics.timed(holder.predict), max_batch_inputs=config.max_batch_inputs)
    metrics.watch(holder, batcher, intake)
    batcher.start()
    servicer = PredictorServicer(
        batcher,
        holder,
        intake,
        max_inputs_per_request=config.max_inputs_per_request,
        max_feedback_per_request=config.max_feedback_per_request,
    )
    try:
        running = await start_server(
            host=config.host,
            port=config.port,
            register=lambda server: predictor_service_pb2_grpc.add_PredictorServiceServicer_to_server(servicer, server),
            service_names=[SERVICE_NAME],
            tls=config.tls,
            require_client_cert=config.tls is not None and config.tls.verifies_peers,
        )
    except BaseException:
        await batcher.close()
        raise
    on_stop = [batcher.close]
    if config.reload_poll_interval_s > 0:
        watcher = asyncio.create_task(holder.watch(config.reload_poll_interval_s), name="predictor-model-watch")
        on_stop.insert(0, lambda: _cancel(watcher))
    handle = PredictorHandle(running, on_stop=on_stop, holder=holder, batcher=batcher)
    await serve_metrics(handle, metrics.registry, config.host, config.metrics_port)
    return handle
