"""The predictor's /metrics over real HTTP: live accuracy, predictions and feedback equal what was sent."""

import grpc
import pytest

pytest.importorskip("onnxruntime")

from services.common.contracts import common_pb2, predictor_service_pb2, predictor_service_pb2_grpc  # noqa: E402
from services.common.metrics_server import MetricsPort  # noqa: E402
from services.predictor import app  # noqa: E402
from services.predictor.artifact import read_metadata  # noqa: E402
from services.predictor.config import DEFAULT_MODEL_DIR, PredictorConfig  # noqa: E402
from tests.metrics_scrape import scrape, value  # noqa: E402


def _finished(index: int, *, actual: int, p50: float, finish=common_pb2.FINISH_REASON_EOS):
    prediction = common_pb2.OutputLengthPrediction(
        mean_tokens=p50,
        source=common_pb2.PREDICTION_SOURCE_PREDICTOR,
        model_version="m1",
        quantiles=[
            common_pb2.LengthQuantile(level=level, num_tokens=p50 * factor)
            for level, factor in ((0.1, 0.5), (0.5, 1.0), (0.9, 2.0))
        ],
    )
    return predictor_service_pb2.FinishedRequest(
        request_id=f"gw-{index}",
        prompt_text=f"prompt {index}",
        num_prompt_tokens=5,
        num_output_tokens=actual,
        served_model="tiny",
        finish_reason=finish,
        max_tokens=512,
        prediction=prediction,
        finished_at_unix_s=1e9,
    )


def _predict_request(*prompts: str) -> predictor_service_pb2.PredictOutputLengthRequest:
    return predictor_service_pb2.PredictOutputLengthRequest(
        inputs=[predictor_service_pb2.PredictionInput(prompt_text=p, num_prompt_tokens=8) for p in prompts]
    )


@pytest.mark.asyncio
async def test_live_accuracy_and_counters_equal_the_workload():
    handle = await app.start(
        PredictorConfig(port=0, live_window_size=100, reload_poll_interval_s=0, metrics_port=MetricsPort(0))
    )
    try:
        empty = await scrape(handle.metrics_port)
        async with grpc.aio.insecure_channel(handle.address) as channel:
            stub = predictor_service_pb2_grpc.PredictorServiceStub(channel)
            await stub.PredictOutputLength(_predict_request("Hi!", "Write an essay on rivers."), timeout=10)
            await stub.PredictOutputLength(_predict_request("Name a color."), timeout=10)
            # p50 = actual + 5 for all 10 scored requests: tau 1, MAE 5, every actual below p90 (2 x p50)
            reports = [_finished(i, actual=10 * (i + 1), p50=10.0 * (i + 1) + 5) for i in range(10)]
            reports.append(_finished(10, actual=512, p50=3.0, finish=common_pb2.FINISH_REASON_LENGTH))  # censored
            await stub.ReportFeedback(predictor_service_pb2.ReportFeedbackRequest(requests=reports), timeout=10)
        samples = await scrape(handle.metrics_port)
    finally:
        await handle.stop()
    assert value(empty, "alise:predictor_live_window_requests") == 0
    assert "alise:predictor_live_kendall_tau" not in empty  # no data yet, not NaN
    assert value(samples, "alise:predictor_live_window_requests") == 10
    assert value(samples, "alise:predictor_live_kendall_tau") == pytest.approx(1.0)
    assert value(samples, "alise:predictor_live_mae_tokens") == pytest.approx(5.0)
    assert value(samples, "alise:predictor_live_p90_coverage") == pytest.approx(1.0)
    assert value(samples, "alise:predictor_predictions_total") == 3
    assert value(samples, "alise:predictor_batch_size_sum") == 3
    assert value(samples, "alise:predictor_batch_seconds_count") == value(samples, "alise:predictor_batches_total")
    assert value(samples, "alise:predictor_feedback_total") == 11
    assert value(samples, "alise:predictor_feedback_censored_total") == 1
    assert value(samples, "alise:predictor_model_reloads_total", outcome="failure") == 0
    version = read_metadata(DEFAULT_MODEL_DIR).model_version
    assert value(samples, "alise:predictor_model_info", version=version) == 1
