"""Starting the predictor service: load the model, start the micro-batcher, serve gRPC."""

from __future__ import annotations

import asyncio

from services.common.contracts import predictor_service_pb2_grpc
from services.common.server import ServiceHandle, start_server
from services.predictor.batcher import MicroBatcher
from services.predictor.config import PredictorConfig
from services.predictor.model import LengthModel
from services.predictor.servicer import SERVICE_NAME, PredictorServicer


async def start(config: PredictorConfig) -> ServiceHandle:
    """A serving predictor (tests use port 0); `await handle.stop()` shuts it down."""
    model = await asyncio.to_thread(
        LengthModel, config.model_dir, intra_op_threads=config.intra_op_threads, allow_cuda=config.allow_cuda
    )
    batcher = MicroBatcher(model.predict, max_batch_inputs=config.max_batch_inputs)
    batcher.start()
    servicer = PredictorServicer(batcher, max_inputs_per_request=config.max_inputs_per_request)
    try:
        running = await start_server(
            host=config.host,
            port=config.port,
            register=lambda server: predictor_service_pb2_grpc.add_PredictorServiceServicer_to_server(
                servicer, server
            ),
            service_names=[SERVICE_NAME],
        )
    except BaseException:
        await batcher.close()
        raise
    return ServiceHandle(running, on_stop=[batcher.close])
