"""The artifact's metadata.json from a training run (train.py): version hash, provenance, settings."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from services.predictor.artifact import QUANTILE_LEVELS, ModelMetadata
from services.predictor.model_inputs import InputLayout

if TYPE_CHECKING:
    from services.predictor.train import TrainSettings


def training_metadata(
    settings: TrainSettings,
    layout: InputLayout,
    default_generator: str,
    payloads: tuple[bytes, bytes, bytes],
    extra: dict,
) -> ModelMetadata:
    """The metadata; `extra` holds the run's results (its named keys are taken out, the rest goes
    under "training"); the model version hashes every payload and the calibration table."""
    import xgboost

    onnx_bytes, heads_bytes, encoder_bytes = payloads
    onnx_sha256 = hashlib.sha256(onnx_bytes).hexdigest()
    calibration = extra.pop("quantile_calibration")
    calibration_bytes = json.dumps(calibration, sort_keys=True).encode("utf-8") if calibration else b""
    combined = hashlib.sha256(onnx_bytes + heads_bytes + encoder_bytes + calibration_bytes).hexdigest()
    return ModelMetadata(
        model_version=f"lenpred-{layout.input_version}-{combined[:12]}",
        input_version=layout.input_version,
        embedding_version=layout.embedding_version,
        feature_names=layout.feature_names(),
        generators=layout.generators,
        default_generator=default_generator,
        served_model_generators=extra.pop("served_model_generators"),
        quantile_levels=QUANTILE_LEVELS,
        onnx_sha256=onnx_sha256,
        text_heads_sha256=hashlib.sha256(heads_bytes).hexdigest(),
        seed=settings.seed,
        data_files_sha256=extra.pop("data_files_sha256"),
        heldout_metrics=extra.pop("heldout_metrics"),
        baselines=extra.pop("baselines"),
        training={
            **extra,
            "heldout_fraction": settings.heldout_fraction,
            "max_examples": settings.max_examples,
            "include_censored": settings.include_censored,
            "xgboost_params": settings.tree_settings().params() | {"max_trees": settings.max_trees},
            "xgboost_version": xgboost.__version__,
        },
        encoder_version=layout.encoder_version,
        encoder_sha256=hashlib.sha256(encoder_bytes).hexdigest() if encoder_bytes else "",
        quantile_calibration=calibration,
    )
