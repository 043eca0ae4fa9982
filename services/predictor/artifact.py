"""The on-disk model artifact: one ONNX graph plus metadata.json, written by training, read by serving.

Layout of a model directory:

    model.onnx      input "features" float32 [n, len(feature_names)]  (see model_inputs.py)
                    outputs "mean_tokens", "q10_tokens", "q50_tokens", "q90_tokens", float32 [n, 1],
                    already in tokens (the log-scale heads end in an Expm1 inside the graph)
    text_heads.npz  the linear text heads whose outputs are two of those columns (text_heads.py)
    encoder.onnx    only with a fine-tuned encoder: its top graph, hidden states -> per-generator
                    length scores (finetune_encoder.py); the shared bottom graph is not in the artifact
    metadata.json   `ModelMetadata` below: version, inputs, seed, data hashes, held-out metrics,
                    baselines

The prompt embedding is not in the artifact: it is the shared graph named by
`embedding_version` (embedding.py), built once per machine, so a model directory stays a few MB.

Invariants: a model is served only when its `feature_names` equal what the running code builds
for its `input_version`, `embedding_version` and `generators` (else loading fails loudly rather
than predicting from shifted columns); `model_version` is derived from the ONNX and text-head
bytes, so two artifacts with the same version are the same model; `write_artifact` replaces files
atomically, metadata.json last, and loading checks both files' sha256 against it, so a model dir
caught mid-copy is refused, never half-served.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ONNX_FILE_NAME = "model.onnx"
TEXT_HEADS_FILE_NAME = "text_heads.npz"
ENCODER_FILE_NAME = "encoder.onnx"
METADATA_FILE_NAME = "metadata.json"
INPUT_NAME = "features"
MEAN_OUTPUT_NAME = "mean_tokens"
FORMAT_VERSION = 2
QUANTILE_LEVELS: tuple[float, ...] = (0.1, 0.5, 0.9)


def quantile_output_name(level: float) -> str:
    """Graph output of one quantile head: 0.1 -> "q10_tokens"."""
    return f"q{round(level * 100)}_tokens"


@dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to serve a model and to know where it came from (metadata.json)."""

    model_version: str  # "lenpred-<input_version>-<first 12 hex of sha256(ONNX bytes + text-head bytes)>"
    input_version: str  # model_inputs.INPUT_VERSION the model was trained with
    embedding_version: str  # EmbeddingSpec.version of the prompt embedding; "" = none used
    feature_names: tuple[str, ...]  # input columns, in order
    generators: tuple[str, ...]  # generator one-hot columns, in order ("sharegpt", "alpaca_eval:gpt-4o", ...)
    default_generator: str  # generator assumed for a request whose served_model maps to none
    served_model_generators: dict[str, str]  # served model name -> generator (from feedback training)
    quantile_levels: tuple[float, ...]  # increasing levels of the quantile heads
    onnx_sha256: str  # hex sha256 of model.onnx
    text_heads_sha256: str  # hex sha256 of text_heads.npz
    seed: int  # training seed (split, subsampling and XGBoost)
    data_files_sha256: dict[str, str]  # data file (relative to the data dir, or feedback dir) -> hex sha256
    heldout_metrics: dict[str, dict[str, float]]  # split name ("all", per source) -> metric -> value
    baselines: dict[str, object] = field(default_factory=dict)  # baselines.Baselines.to_dict()
    training: dict[str, object] = field(default_factory=dict)  # row counts, trees, XGBoost params
    encoder_version: str = ""  # EncoderSpec.version of the fine-tuned encoder; "" = none (finetune_encoder.py)
    encoder_sha256: str = ""  # hex sha256 of encoder.onnx; "" without a fine-tuned encoder
    quantile_calibration: dict[str, object] = field(default_factory=dict)  # calibration.py table; {} = none
    format_version: int = FORMAT_VERSION  # layout version of this file

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        raw = json.loads(text)
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"unsupported metadata format_version {raw.get('format_version')!r} "
                f"(this code reads {FORMAT_VERSION}): retrain the model"
            )
        for name in ("feature_names", "generators", "quantile_levels"):
            raw[name] = tuple(raw[name])
        raw["quantile_levels"] = tuple(float(level) for level in raw["quantile_levels"])
        return cls(**raw)


def read_metadata(model_dir: Path) -> ModelMetadata:
    """metadata.json of a model directory; FileNotFoundError naming the path when it is missing."""
    path = model_dir / METADATA_FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {METADATA_FILE_NAME} in model directory {model_dir}")
    return ModelMetadata.from_json(path.read_text(encoding="utf-8"))


def _replace_atomically(path: Path, payload: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as stream:
        stream.write(payload)
        temporary = Path(stream.name)
    temporary.chmod(0o644)  # NamedTemporaryFile creates 0600; a model file is for everyone to read
    os.replace(temporary, path)


def write_artifact(
    model_dir: Path, onnx_bytes: bytes, text_heads_bytes: bytes, metadata: ModelMetadata, encoder_bytes: bytes = b""
) -> None:
    """Writes encoder.onnx (when given), model.onnx, text_heads.npz, then metadata.json, each by an
    atomic rename. A stale encoder.onnx of an earlier model is removed when none is given."""
    model_dir.mkdir(parents=True, exist_ok=True)
    if encoder_bytes:
        _replace_atomically(model_dir / ENCODER_FILE_NAME, encoder_bytes)
    else:
        (model_dir / ENCODER_FILE_NAME).unlink(missing_ok=True)
    _replace_atomically(model_dir / ONNX_FILE_NAME, onnx_bytes)
    _replace_atomically(model_dir / TEXT_HEADS_FILE_NAME, text_heads_bytes)
    _replace_atomically(model_dir / METADATA_FILE_NAME, metadata.to_json().encode("utf-8"))
