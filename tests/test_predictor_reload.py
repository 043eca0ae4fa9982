"""Hot reload: a new model file replaces the served one under concurrent calls, none dropped."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import pytest

pytest.importorskip("xgboost")
pytest.importorskip("onnxmltools")

from services.common.contracts import predictor_service_pb2, predictor_service_pb2_grpc  # noqa: E402
from services.predictor import app  # noqa: E402
from services.predictor.artifact import (  # noqa: E402
    METADATA_FILE_NAME,
    ONNX_FILE_NAME,
    TEXT_HEADS_FILE_NAME,
    read_metadata,
)
from services.predictor.config import PredictorConfig  # noqa: E402
from services.predictor.train import TrainSettings, run_training  # noqa: E402
from tests.test_predictor_model import _write_synthetic_data  # noqa: E402

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> tuple[Path, Path]:
    """Two small lexical-only models with different versions (different seeds)."""
    root = tmp_path_factory.mktemp("models")
    _write_synthetic_data(root / "data", num_records=300)
    for name, seed in (("a", 1), ("b", 2)):
        settings = TrainSettings(
            data_dir=root / "data", out_dir=root / name, seed=seed, use_embedding=False, max_trees=15, num_threads=1
        )
        run_training(settings, progress=lambda line: None)
    return root / "a", root / "b"


def _install(source: Path, model_dir: Path) -> None:
    """Copies a model the way a careless operator would: file by file, metadata.json last."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in (ONNX_FILE_NAME, TEXT_HEADS_FILE_NAME, METADATA_FILE_NAME):
        shutil.copyfile(source / name, model_dir / name)


def _request(index: int) -> predictor_service_pb2.PredictOutputLengthRequest:
    text = f"Give me {index % 9 + 1} ideas about topic {index}"
    return predictor_service_pb2.PredictOutputLengthRequest(
        inputs=[predictor_service_pb2.PredictionInput(prompt_text=text, num_prompt_tokens=8)]
    )


async def _serve(model_dir: Path, poll_s: float):
    return await app.start(PredictorConfig(port=0, model_dir=model_dir, reload_poll_interval_s=poll_s))


async def test_new_model_file_is_picked_up_without_dropping_calls(two_models, tmp_path):
    first, second = (read_metadata(path).model_version for path in two_models)
    model_dir = tmp_path / "served"
    _install(two_models[0], model_dir)
    handle = await _serve(model_dir, poll_s=0.05)
    seen: list[list[str]] = [[] for _ in range(8)]
    swapped = asyncio.Event()

    async def caller(stub, versions: list[str]) -> None:
        index = 0
        while not swapped.is_set() or len(versions) < 5 or versions[-1] != second:
            reply = await stub.PredictOutputLength(_request(index), timeout=10)
            versions.append(reply.model_version)
            index += 1

    try:
        async with grpc.aio.insecure_channel(handle.address) as channel:
            stub = predictor_service_pb2_grpc.PredictorServiceStub(channel)
            callers = [asyncio.create_task(caller(stub, versions)) for versions in seen]
            await asyncio.sleep(0.3)
            _install(two_models[1], model_dir)
            swapped.set()
            await asyncio.wait_for(asyncio.gather(*callers), timeout=60)
    finally:
        await handle.stop(0)
    assert handle.holder.num_reloads == 1 and handle.holder.current.model_version == second
    for versions in seen:  # every call answered; each caller sees the old model, then only the new one
        assert set(versions) <= {first, second} and versions[0] == first and versions[-1] == second
        switch = versions.index(second)
        assert all(version == second for version in versions[switch:])
    assert handle.batcher.num_batches > 0


async def test_broken_model_keeps_the_old_one_and_reload_rpc_reports_it(two_models, tmp_path):
    first, second = (read_metadata(path).model_version for path in two_models)
    model_dir = tmp_path / "served"
    _install(two_models[0], model_dir)
    handle = await _serve(model_dir, poll_s=0)  # no watcher: reloads only by RPC
    try:
        async with grpc.aio.insecure_channel(handle.address) as channel:
            stub = predictor_service_pb2_grpc.PredictorServiceStub(channel)
            (model_dir / ONNX_FILE_NAME).write_bytes(b"not an onnx model")
            reply = await stub.ReloadModel(predictor_service_pb2.ReloadModelRequest(), timeout=30)
            assert not reply.changed and reply.model_version == first and "does not match" in reply.error
            answer = await stub.PredictOutputLength(_request(1), timeout=10)
            assert answer.model_version == first  # still serving
            _install(two_models[1], model_dir)
            reply = await stub.ReloadModel(predictor_service_pb2.ReloadModelRequest(), timeout=30)
            assert reply.changed and reply.model_version == second and reply.error == ""
            stats = await stub.GetStats(predictor_service_pb2.PredictorServiceGetStatsRequest(), timeout=10)
            assert (stats.num_reloads, stats.num_failed_reloads, stats.model_version) == (1, 1, second)
    finally:
        await handle.stop(0)
