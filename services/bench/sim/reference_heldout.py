"""The shipped predictor's own predictions on the reference traces' held-out prompts, for the simulator.

Two traces, each a dataset trace of workload.py restricted to the prompts the shipped default
predictor never trained on: no normalized prompt text that any of its training rows carries, in any
source (ShareGPT, AlpacaEval, the feedback files) and under either grouping the code has used
(`model_predictions.trained_prompt_keys`):

    sharegpt-heldout   the `sharegpt` trace (first-turn prompts, the first ChatGPT reply's length,
                       Llama-2 tokens, vLLM's filter), predicted for the `sharegpt` column
    alpaca-heldout     the `alpaca` trace (AlpacaEval instructions, text_davinci_003's answers: the
                       Alpaca writer), predicted for the `alpaca_eval:text_davinci_003` column

Each held-out prompt is predicted once, in-process through ONNX Runtime (1 thread), for its trace's
generator column, with the trace's own Llama-2 prompt length as training saw it; the rows (lengths and
predictions, never prompt text: the data is research-licensed) are cached under
~/.cache/alise/sim-predictions keyed by the model's and the data files' hashes ($ALISE_CACHE_DIR
overrides ~/.cache/alise, as for the predictor service).

Which texts were feedback comes from the feedback files (`FeedbackTexts.FILES`, this module's default:
the model's own, restored from the repository's lengths files when it has them, shipped_feedback.py) or
from collect-lengths' prompt list (`FeedbackTexts.COLLECT_LIST`, feedback_texts.py: a superset, so fewer
rows are held out; it needs no feedback file); the choice is part of the cache key, so neither reads the
other's rows.

A trace of N requests samples the held-out rows as `load_trace` samples ShareGPT: without replacement
while they suffice, with replacement (seeded) beyond, so a trace longer than the held-out set repeats
prompts with the same length and the same prediction.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

from services.bench.sim.feedback_texts import (
    COLLECT_LIST_DATA_FILES,
    RECORDED_COLLECT_FLAGS,
    FeedbackTexts,
    collect_list_texts,
)
from services.bench.sim.model_predictions import (
    CACHE_SUBDIR,
    HeldoutRow,
    HeldoutSet,
    heldout_workload,
    predicted_rows,
    read_heldout_cache,
    trained_prompt_keys,
    trained_prompt_keys_with_texts,
)
from services.bench.sim.shipped_feedback import given_or_shipped
from services.bench.workload import (
    ALPACA_EVAL_FILE,
    ALPACA_GENERATOR,
    SHAREGPT_FILE,
    TraceRequest,
    _alpaca_rows,
    _sharegpt_rows,
    resolve_data_dir,
)
from services.engine.length_distribution import LengthDistribution
from services.predictor.config import DEFAULT_MODEL_DIR
from services.predictor.embedding import default_cache_dir

CACHE_FORMAT = 1
# Rows are cached for every length; the workload drops those longer than its max_model_len.
UNBOUNDED_MODEL_LEN = 1 << 30


class ReferenceTrace(StrEnum):
    """The held-out reference traces (`--trace` values)."""

    SHAREGPT_HELDOUT = "sharegpt-heldout"
    ALPACA_HELDOUT = "alpaca-heldout"


REFERENCE_TRACE_NAMES = tuple(trace.value for trace in ReferenceTrace)


@dataclass(frozen=True)
class ReferenceSource:
    """Where a held-out trace's rows come from and whose lengths the predictor is asked for."""

    data_file: pathlib.PurePosixPath  # under ../shared/data; must be the file the model trained on
    rows: Callable[[pathlib.Path, int], list[TraceRequest]]  # (data root, max_model_len) -> the dataset trace
    generator: str  # the predictor's generator column


SOURCES = {
    ReferenceTrace.SHAREGPT_HELDOUT: ReferenceSource(SHAREGPT_FILE, _sharegpt_rows, "sharegpt"),
    ReferenceTrace.ALPACA_HELDOUT: ReferenceSource(ALPACA_EVAL_FILE, _alpaca_rows, f"alpaca_eval:{ALPACA_GENERATOR}"),
}


def load_reference_heldout(
    trace: ReferenceTrace,
    model_dir: pathlib.Path = DEFAULT_MODEL_DIR,
    feedback_files: Sequence[pathlib.Path] | None = None,
    feedback_texts: FeedbackTexts = FeedbackTexts.FILES,
    *,
    data_dir: pathlib.Path | None = None,
    cache_dir: pathlib.Path | None = None,
) -> HeldoutSet:
    """The trace's held-out rows with the shipped model's predictions: from the cache, else predicted
    once and cached. feedback_files are read only under FeedbackTexts.FILES; None: the model's own, restored
    from the repository (`shipped_feedback_files`) under the same cache root. FileNotFoundError names a
    missing file; ValueError when a dataset file or a feedback file is not the one the model trained on
    (its held-out split would not be the model's)."""
    source = SOURCES[ReferenceTrace(trace)]
    root = resolve_data_dir(data_dir)
    texts = FeedbackTexts(feedback_texts)
    cache_root = cache_dir or default_cache_dir()
    files = []
    if texts is FeedbackTexts.FILES:
        files = given_or_shipped(model_dir, feedback_files, data_dir=root, cache_dir=cache_root)
    metadata = json.loads((model_dir / "metadata.json").read_text())
    cache_path = cache_root / CACHE_SUBDIR / _cache_name(trace, texts, root, files, metadata)
    if not cache_path.is_file():
        requests = heldout_requests(trace, root, files, metadata, texts)
        rows = predict_rows(model_dir, default_cache_dir(), requests, source.generator)  # the service's graph cache
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model_version": metadata["model_version"], "trace": str(trace), "rows": rows}
        cache_path.write_text(json.dumps(payload, default=asdict))
    return read_heldout_cache(cache_path)


def _cache_name(
    trace: ReferenceTrace, texts: FeedbackTexts, root: pathlib.Path, files: list[pathlib.Path], metadata: dict
) -> str:
    """The cache file's name: the trace, the model, and the sha256 of every file the held-out split reads
    (files: the key as before collect-list existed, so existing caches stay valid; collect-list: its flags
    and the list's data files, no feedback file, and its own name)."""
    source = SOURCES[ReferenceTrace(trace)]
    key: list = [CACHE_FORMAT, str(trace), metadata["model_version"], metadata.get("encoder_sha256")]
    if texts is FeedbackTexts.FILES:
        key.append(_trained_hashes(source, root, files, metadata))
        return f"{trace}-{_digest(key)}.json"
    paths = sorted({source.data_file, *COLLECT_LIST_DATA_FILES})
    key += [str(texts), asdict(RECORDED_COLLECT_FLAGS), [_checked_sha(root, path, metadata) for path in paths]]
    return f"{trace}-{texts}-{_digest(key)}.json"


def _digest(key: list) -> str:
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def heldout_requests(
    trace: ReferenceTrace,
    root: pathlib.Path,
    files: Sequence[pathlib.Path],
    metadata: dict,
    feedback_texts: FeedbackTexts = FeedbackTexts.FILES,
) -> list[TraceRequest]:
    """The dataset trace's rows (any length) whose normalized prompt text no training row of the model holds
    (FILES: the feedback `files`' rows as split; COLLECT_LIST: every text of collect-lengths' list)."""
    from services.predictor import data

    if FeedbackTexts(feedback_texts) is FeedbackTexts.FILES:
        trained = trained_prompt_keys(files, root, metadata)
    else:
        trained = trained_prompt_keys_with_texts(collect_list_texts(root), root, metadata)
    rows = SOURCES[ReferenceTrace(trace)].rows(root, UNBOUNDED_MODEL_LEN)
    return [row for row in rows if data.prompt_key(row.prompt_text or "") not in trained]


def _checked_sha(root: pathlib.Path, relative: pathlib.PurePosixPath, metadata: dict) -> str:
    """The sha256 of a dataset file; ValueError unless it is the file the model trained on."""
    from services.predictor import data

    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (datasets: ../shared/data)")
    sha = data.file_sha256(path)
    if metadata["data_files_sha256"].get(str(relative)) != sha:
        raise ValueError(f"{path} is not the file {metadata['model_version']} trained on")
    return sha


def _trained_hashes(
    source: ReferenceSource, root: pathlib.Path, files: list[pathlib.Path], metadata: dict
) -> list[str]:
    """The sha256 of the dataset file and the feedback files, each checked against the model's training files."""
    from services.predictor import data

    for path in files:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found (feedback: `alise collect-lengths`; or --feedback-texts collect-list)"
            )
    dataset_sha = _checked_sha(root, source.data_file, metadata)
    hashes = [data.file_sha256(path) for path in files]
    for path, sha in zip(files, hashes, strict=True):
        if sha not in metadata["data_files_sha256"].values():
            raise ValueError(f"{path} is not among the model's training files: its held-out split is undefined")
    return [dataset_sha, *sorted(hashes)]


def predict_rows(
    model_dir: pathlib.Path, cache_root: pathlib.Path, requests: Sequence[TraceRequest], generator: str
) -> list[HeldoutRow]:
    """The requests predicted by the model in-process (ONNX Runtime, 1 thread) for `generator`'s
    column, as the predictor service serves a request whose served model maps to that column."""
    from services.predictor.model import PromptInput
    from services.predictor.reload import LoadSettings, PredictorLoader

    predictor = PredictorLoader(LoadSettings(model_dir, cache_root, 1, 1, allow_cuda=False)).load()
    inputs = [PromptInput(r.prompt_text or "", r.num_prompt_tokens, generator) for r in requests]
    lengths = [(request.num_prompt_tokens, request.num_output_tokens) for request in requests]
    return predicted_rows(lengths, predictor.predict(inputs))


def reference_heldout_workload(
    trace: ReferenceTrace, heldout: HeldoutSet, *, num_requests: int, seed: int, max_model_len: int
) -> tuple[list[TraceRequest], list[LengthDistribution]]:
    """num_requests held-out rows in arrival order with the predictor's distribution of each: a seeded
    permutation while the rows that fit max_model_len suffice, drawn with replacement beyond."""
    return heldout_workload(
        heldout,
        num_requests=num_requests,
        seed=seed,
        max_model_len=max_model_len,
        trace_name=str(trace),
        permute_while_enough=True,
    )
