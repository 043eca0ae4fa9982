"""The shipped predictor's own predictions for the simulator, on the served model's own output lengths.

The noisy oracle (predictions.py) dials prediction quality; this mode measures the quality users get.
Its trace, `smollm2-heldout`, is built from the feedback files that `alise collect-lengths` recorded
(SmolLM2-135M-Instruct's answers to ShareGPT and AlpacaEval prompts, `max_tokens` 512, censored
answers counted as 512 as in training) and the model trained on: by default the ones its metadata.json
names, restored from the repository's lengths files and ../shared/data (shipped_feedback.py; a model
trained on a file the repository has no lengths file for, such as the lost feedback-20261206a/b, needs
--feedback-file). It keeps only the prompts the shipped default predictor
never trained on: no normalized prompt text that any of its training rows carries, in any source and
under either grouping the code has used (`heldout_examples`). Each held-out prompt is predicted once,
in-process through ONNX Runtime (1 thread), for the served model's column, and the rows (lengths and
predictions, no prompt text) are cached under ~/.cache/alise/sim-predictions keyed by the model's
and the files' hashes.

Only a few dozen prompts are held out that way (53 for the default trained on the 2026-12-06 files, 64
for `42ebaff76cc4`, whose tau on them is 0.18: too few to measure ranking by), so
a trace of N requests resamples them with replacement (seeded): the same prompt recurs with the same
length and the same prediction.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from services.bench.sim.shipped_feedback import given_or_shipped
from services.bench.workload import TraceRequest, resolve_data_dir
from services.common.cache_dir import default_cache_dir
from services.engine.length_distribution import LengthDistribution
from services.predictor.config import DEFAULT_MODEL_DIR

TRACE_NAME = "smollm2-heldout"
SERVED_MODEL = "smollm2-135m-instruct"  # the default model; the predictor maps it to its feedback column
CACHE_SUBDIR = "sim-predictions"
CACHE_FORMAT = 2


@dataclass(frozen=True)
class HeldoutRow:
    """One held-out prompt: the served model's lengths and the shipped predictor's prediction."""

    num_prompt_tokens: int  # the prompt in the served model's tokens (>= 1)
    num_output_tokens: int  # the served model's answer (censored at max_tokens counts as max_tokens)
    mean_tokens: float  # predicted mean output length
    quantiles: tuple[tuple[float, float], ...]  # (level, tokens), increasing levels


@dataclass(frozen=True)
class HeldoutSet:
    """The cached prediction set and where it came from."""

    rows: tuple[HeldoutRow, ...]
    model_version: str  # the predictor that predicted them
    kendall_tau: float  # of predicted means vs true lengths over the distinct held-out rows
    cache_path: pathlib.Path


def load_heldout_set(
    model_dir: pathlib.Path = DEFAULT_MODEL_DIR,
    feedback_files: Sequence[pathlib.Path] | None = None,
    *,
    data_dir: pathlib.Path | None = None,
    cache_dir: pathlib.Path | None = None,
) -> HeldoutSet:
    """The held-out rows with predictions: from the cache, else predicted once and cached. feedback_files
    None: the model's own, restored from the repository (`shipped_feedback_files`) under the same cache root.
    FileNotFoundError names a missing feedback file; ValueError when a file is not one the model trained on
    (then its held-out split would not be the model's)."""
    from services.predictor import data

    root = cache_dir or default_cache_dir()
    files = given_or_shipped(model_dir, feedback_files, data_dir=data_dir, cache_dir=root)
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"feedback file {path} not found (written by `alise collect-lengths`' stack)")
    metadata = json.loads((model_dir / "metadata.json").read_text())
    trained = set(metadata["data_files_sha256"].values())
    hashes = [data.file_sha256(path) for path in files]
    for path, sha in zip(files, hashes, strict=True):
        if sha not in trained:
            raise ValueError(f"{path} is not among {model_dir}'s training files: its held-out split is undefined")
    key_text = json.dumps([CACHE_FORMAT, metadata["model_version"], metadata.get("encoder_sha256"), sorted(hashes)])
    cache_path = root / CACHE_SUBDIR / f"{hashlib.sha256(key_text.encode()).hexdigest()[:16]}.json"
    if not cache_path.is_file():
        rows = _predict_heldout(model_dir, files, resolve_data_dir(data_dir), root, metadata)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"model_version": metadata["model_version"], "files": [str(p) for p in files], "rows": rows}
        cache_path.write_text(json.dumps(payload, default=asdict))
    return read_heldout_cache(cache_path)


def read_heldout_cache(path: pathlib.Path) -> HeldoutSet:
    """A cached prediction set (rows, no prompt text); Kendall's tau over its rows."""
    payload = json.loads(path.read_text())
    rows = tuple(
        HeldoutRow(
            int(row["num_prompt_tokens"]),
            int(row["num_output_tokens"]),
            float(row["mean_tokens"]),
            tuple((float(level), float(tokens)) for level, tokens in row["quantiles"]),
        )
        for row in payload["rows"]
    )
    from scipy.stats import kendalltau

    tau = kendalltau([r.mean_tokens for r in rows], [r.num_output_tokens for r in rows]).statistic
    return HeldoutSet(rows, payload["model_version"], float(tau), path)


def heldout_examples(files: Sequence[pathlib.Path], data_dir: pathlib.Path, metadata: dict) -> list:
    """The feedback rows whose normalized prompt text no training row of the model holds (`trained_prompt_keys`)."""
    from services.predictor import data

    trained = trained_prompt_keys(files, data_dir, metadata)
    feedback = [example for path in files for example in data.load_file(path)]
    return [example for example in feedback if data.prompt_key(example.prompt_text) not in trained]


def trained_prompt_keys(files: Sequence[pathlib.Path], data_dir: pathlib.Path, metadata: dict) -> set[str]:
    """The normalized prompt texts (`data.prompt_key`) of every training row of the model, under the
    per-source groups the model was trained with before `data.canonical_groups` (feedback: prompt
    text; ShareGPT: conversation; AlpacaEval: instruction) and under the canonical groups since: a
    text counts as held out only when every row carrying it, in any source file the model trained
    on (ShareGPT, AlpacaEval and the feedback `files`), is on the held-out side of both splits (the
    model's seed and held-out fraction)."""
    from services.predictor import data

    feedback = [example for path in files for example in data.load_file(path)]
    return _trained_keys([*_reference_examples(data_dir, metadata), *feedback], metadata)


def trained_prompt_keys_with_texts(texts: Iterable[str], data_dir: pathlib.Path, metadata: dict) -> set[str]:
    """`trained_prompt_keys` with every text of `texts` counted as trained, whatever its split, in place of
    the feedback files: the reference rows' trained keys, split without feedback, plus the texts' keys.

    A superset of `trained_prompt_keys(files)` whenever every feedback text is among `texts`: feedback rows
    never change how a reference row splits (a feedback group holds one text, `feedback_example`, and
    `canonical_groups` gives a shared text the reference row's group, ranking feedback last; the split
    hashes each group alone, `data.is_heldout`), and each feedback key is in the texts' keys."""
    from services.predictor import data

    return _trained_keys(_reference_examples(data_dir, metadata), metadata) | {data.prompt_key(t) for t in texts}


def _reference_examples(data_dir: pathlib.Path, metadata: dict) -> list:
    """The ShareGPT and AlpacaEval rows of the files the model trained on."""
    from services.predictor import data

    references = []
    for name in (data.SHAREGPT_FILE, data.ALPACA_EVAL_FILE):
        if name in metadata["data_files_sha256"]:
            references += data.load_file(data_dir / name)
    return references


def _trained_keys(everything: list, metadata: dict) -> set[str]:
    """The keys of the rows on the training side of either grouping (the model's seed and fraction)."""
    from services.predictor import data

    seed, fraction = int(metadata["seed"]), float(metadata["training"].get("heldout_fraction", 0.2))
    trained = set()
    for grouping in (everything, data.canonical_groups(everything)):
        train, _ = data.split_by_group(grouping, heldout_fraction=fraction, seed=seed)
        trained |= {data.prompt_key(example.prompt_text) for example in train}
    return trained


def _predict_heldout(
    model_dir: pathlib.Path, files: list[pathlib.Path], data_dir: pathlib.Path, cache_root: pathlib.Path, metadata: dict
) -> list[HeldoutRow]:
    """The held-out rows predicted by the shipped model in-process (ONNX Runtime, 1 thread), as served."""
    from services.predictor.model import PromptInput
    from services.predictor.reload import LoadSettings, PredictorLoader

    predictor = PredictorLoader(LoadSettings(model_dir, cache_root, 1, 1, allow_cuda=False)).load()
    examples = heldout_examples(files, data_dir, metadata)
    inputs = [PromptInput(e.prompt_text, max(e.num_prompt_tokens, 1), SERVED_MODEL) for e in examples]
    lengths = [(max(example.num_prompt_tokens, 1), example.num_output_tokens) for example in examples]
    return predicted_rows(lengths, predictor.predict(inputs))


def predicted_rows(lengths: Sequence[tuple[int, int]], predicted: Sequence) -> list[HeldoutRow]:
    """One row per (prompt tokens, output tokens) pair with its predicted distribution (same order)."""
    return [
        HeldoutRow(
            num_prompt,
            num_output,
            distribution.mean_tokens,
            tuple((q.level, q.num_tokens) for q in distribution.quantiles),
        )
        for (num_prompt, num_output), distribution in zip(lengths, predicted, strict=True)
    ]


def heldout_workload(
    heldout: HeldoutSet,
    *,
    num_requests: int,
    seed: int,
    max_model_len: int,
    trace_name: str = TRACE_NAME,
    permute_while_enough: bool = False,
) -> tuple[list[TraceRequest], list[LengthDistribution]]:
    """num_requests held-out rows in arrival order with the predictor's distribution of each; rows longer
    than max_model_len are left out. Drawn with replacement (seeded), or, with permute_while_enough, a seeded
    permutation while the rows suffice."""
    if num_requests <= 0:
        raise ValueError(f"num_requests must be > 0, got {num_requests}")
    rows = [row for row in heldout.rows if row.num_prompt_tokens + row.num_output_tokens <= max_model_len]
    if not rows:
        raise ValueError(f"no held-out row fits max_model_len={max_model_len}")
    rng = np.random.default_rng(seed)
    if permute_while_enough and num_requests <= len(rows):
        picks = rng.permutation(len(rows))[:num_requests].tolist()
    else:
        picks = rng.integers(0, len(rows), size=num_requests).tolist()
    trace = [
        TraceRequest(f"{trace_name}-{seed}-{i}", None, rows[pick].num_prompt_tokens, rows[pick].num_output_tokens)
        for i, pick in enumerate(picks)
    ]
    distributions = [LengthDistribution(rows[pick].mean_tokens, list(rows[pick].quantiles)) for pick in picks]
    return trace, distributions
