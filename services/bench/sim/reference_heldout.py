"""The shipped predictor's own predictions on the ShareGPT trace's held-out prompts, for the simulator.

The `sharegpt-heldout` trace is the `sharegpt` trace (workload.py: first-turn prompts and the first
ChatGPT reply's length, Llama-2 tokens, vLLM's filter) restricted to the prompts the shipped default
predictor never trained on: no normalized prompt text that any of its training rows carries, in any
source (ShareGPT, AlpacaEval, the feedback files) and under either grouping the code has used
(`model_predictions.trained_prompt_keys`). Each held-out prompt is predicted once, in-process through
ONNX Runtime (1 thread), for the model's default generator column (`sharegpt`), with the trace's own
Llama-2 prompt length as training saw it; the rows (lengths and predictions, never prompt text: the
data is research-licensed) are cached under ~/.cache/alise/sim-predictions keyed by the model's and
the data files' hashes ($ALISE_CACHE_DIR overrides ~/.cache/alise, as for the predictor service).

A trace of N requests samples the held-out rows as `load_trace` samples ShareGPT: without replacement
while they suffice, with replacement (seeded) beyond, so a trace longer than the held-out set repeats
prompts with the same length and the same prediction.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from dataclasses import asdict
from typing import Sequence

from services.bench.sim.model_predictions import (
    CACHE_SUBDIR,
    DEFAULT_FEEDBACK_FILES,
    HeldoutRow,
    HeldoutSet,
    heldout_workload,
    predicted_rows,
    read_heldout_cache,
    trained_prompt_keys,
)
from services.bench.workload import SHAREGPT_FILE, TraceRequest, _sharegpt_rows, resolve_data_dir
from services.engine.length_distribution import LengthDistribution
from services.predictor.config import DEFAULT_MODEL_DIR
from services.predictor.embedding import default_cache_dir

TRACE_NAME = "sharegpt-heldout"
CACHE_FORMAT = 1
# Rows are cached for every length; the workload drops those longer than its max_model_len.
UNBOUNDED_MODEL_LEN = 1 << 30


def load_sharegpt_heldout(
    model_dir: pathlib.Path = DEFAULT_MODEL_DIR,
    feedback_files: Sequence[pathlib.Path] = DEFAULT_FEEDBACK_FILES,
    *,
    data_dir: pathlib.Path | None = None,
    cache_dir: pathlib.Path | None = None,
) -> HeldoutSet:
    """The held-out ShareGPT rows with the shipped model's predictions: from the cache, else predicted
    once and cached. FileNotFoundError names a missing file; ValueError when the ShareGPT file or a
    feedback file is not the one the model trained on (its held-out split would not be the model's)."""
    root = resolve_data_dir(data_dir)
    files = [pathlib.Path(path) for path in feedback_files]
    metadata = json.loads((model_dir / "metadata.json").read_text())
    key_text = json.dumps(
        [
            CACHE_FORMAT,
            TRACE_NAME,
            metadata["model_version"],
            metadata.get("encoder_sha256"),
            _trained_hashes(root, files, metadata),
        ]
    )
    cache_path = (
        (cache_dir or default_cache_dir())
        / CACHE_SUBDIR
        / f"{TRACE_NAME}-{hashlib.sha256(key_text.encode()).hexdigest()[:16]}.json"
    )
    if not cache_path.is_file():
        requests = heldout_sharegpt_requests(root, files, metadata)
        rows = predict_rows(model_dir, default_cache_dir(), requests)  # the service's embedding graph cache
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model_version": metadata["model_version"], "trace": TRACE_NAME, "rows": rows}
        cache_path.write_text(json.dumps(payload, default=asdict))
    return read_heldout_cache(cache_path)


def heldout_sharegpt_requests(root: pathlib.Path, files: Sequence[pathlib.Path], metadata: dict) -> list[TraceRequest]:
    """The sharegpt trace's rows (any length) whose normalized prompt text no training row of the model holds."""
    from services.predictor import data

    trained = trained_prompt_keys(files, root, metadata)
    rows = _sharegpt_rows(root, UNBOUNDED_MODEL_LEN)
    return [row for row in rows if data.prompt_key(row.prompt_text or "") not in trained]


def _trained_hashes(root: pathlib.Path, files: list[pathlib.Path], metadata: dict) -> list[str]:
    """The sha256 of the ShareGPT file and the feedback files, each checked against the model's training files."""
    from services.predictor import data

    trained = metadata["data_files_sha256"]
    sharegpt_path = root / SHAREGPT_FILE
    for path in [sharegpt_path, *files]:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (ShareGPT: ../shared/data; feedback: `alise collect-lengths`)")
    sharegpt_sha = data.file_sha256(sharegpt_path)
    if trained.get(str(SHAREGPT_FILE)) != sharegpt_sha:
        raise ValueError(f"{sharegpt_path} is not the ShareGPT file {metadata['model_version']} trained on")
    hashes = [data.file_sha256(path) for path in files]
    for path, sha in zip(files, hashes, strict=True):
        if sha not in trained.values():
            raise ValueError(f"{path} is not among the model's training files: its held-out split is undefined")
    return [sharegpt_sha, *sorted(hashes)]


def predict_rows(
    model_dir: pathlib.Path, cache_root: pathlib.Path, requests: Sequence[TraceRequest]
) -> list[HeldoutRow]:
    """The requests predicted by the model in-process (ONNX Runtime, 1 thread) for its default
    generator column, as the predictor service serves a request that names no model."""
    from services.predictor.model import PromptInput
    from services.predictor.reload import LoadSettings, PredictorLoader

    predictor = PredictorLoader(LoadSettings(model_dir, cache_root, 1, 1, allow_cuda=False)).load()
    inputs = [PromptInput(r.prompt_text or "", r.num_prompt_tokens) for r in requests]
    lengths = [(request.num_prompt_tokens, request.num_output_tokens) for request in requests]
    return predicted_rows(lengths, predictor.predict(inputs))


def sharegpt_heldout_workload(
    heldout: HeldoutSet, *, num_requests: int, seed: int, max_model_len: int
) -> tuple[list[TraceRequest], list[LengthDistribution]]:
    """num_requests held-out rows in arrival order with the predictor's distribution of each: a seeded
    permutation while the rows that fit max_model_len suffice, drawn with replacement beyond."""
    return heldout_workload(
        heldout,
        num_requests=num_requests,
        seed=seed,
        max_model_len=max_model_len,
        trace_name=TRACE_NAME,
        permute_while_enough=True,
    )
