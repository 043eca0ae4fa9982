"""The on-disk model artifact: one ONNX graph plus metadata.json, written by training, read by serving.

Layout of a model directory:

    model.onnx      input "features" float32 [n, NUM_FEATURES]
                    outputs "mean_tokens", "q10_tokens", "q50_tokens", "q90_tokens", float32 [n, 1],
                    already in tokens (the log-scale heads end in an Expm1 inside the graph)
    metadata.json   `ModelMetadata` below: version, features, seed, data hashes, held-out metrics

Invariants: a model is served only when its `feature_version` equals the running code's
`features.FEATURE_VERSION` and its `feature_names` match exactly (else loading fails loudly rather
than predicting from shifted columns); `model_version` is derived from the ONNX bytes, so two
artifacts with the same version are the same model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

ONNX_FILE_NAME = "model.onnx"
METADATA_FILE_NAME = "metadata.json"
INPUT_NAME = "features"
MEAN_OUTPUT_NAME = "mean_tokens"
FORMAT_VERSION = 1
QUANTILE_LEVELS: tuple[float, ...] = (0.1, 0.5, 0.9)


def quantile_output_name(level: float) -> str:
    """Graph output of one quantile head: 0.1 -> "q10_tokens"."""
    return f"q{round(level * 100)}_tokens"


@dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to serve a model and to know where it came from (metadata.json)."""

    model_version: str  # "lenpred-<feature_version>-<first 12 hex of the ONNX sha256>"
    feature_version: str  # features.FEATURE_VERSION the model was trained with
    feature_names: tuple[str, ...]  # input columns, in order
    quantile_levels: tuple[float, ...]  # increasing levels of the quantile heads
    onnx_sha256: str  # hex sha256 of model.onnx
    seed: int  # training seed (data split, subsampling and XGBoost)
    data_files_sha256: dict[str, str]  # data file path relative to the data dir -> hex sha256
    sources: tuple[str, ...]  # training sources: "sharegpt", "alpaca_eval:<generator>", ...
    heldout_metrics: dict[str, dict[str, float]]  # split name ("all", per source) -> metric -> value
    training: dict[str, object] = field(default_factory=dict)  # row counts, trees, XGBoost params
    format_version: int = FORMAT_VERSION  # layout version of this file

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        raw = json.loads(text)
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported metadata format_version {raw.get('format_version')!r}")
        raw["feature_names"] = tuple(raw["feature_names"])
        raw["quantile_levels"] = tuple(float(level) for level in raw["quantile_levels"])
        raw["sources"] = tuple(raw["sources"])
        return cls(**raw)


def read_metadata(model_dir: Path) -> ModelMetadata:
    """metadata.json of a model directory; FileNotFoundError naming the path when it is missing."""
    path = model_dir / METADATA_FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {METADATA_FILE_NAME} in model directory {model_dir}")
    return ModelMetadata.from_json(path.read_text(encoding="utf-8"))


def write_artifact(model_dir: Path, onnx_bytes: bytes, metadata: ModelMetadata) -> None:
    """Writes model.onnx and metadata.json (creating the directory)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / ONNX_FILE_NAME).write_bytes(onnx_bytes)
    (model_dir / METADATA_FILE_NAME).write_text(metadata.to_json(), encoding="utf-8")
