"""A predictor's own feedback files for the simulator, restored from the repository's lengths files.

The held-out traces (`--feedback-texts files`, smollm2-heldout) rebuild the model's held-out split, so
they need the very feedback files it trained on: metadata.json names them (`data_files_sha256`, keys
`feedback/<name>`, in training order). Their prompt texts may not enter the repository, but each file's
text-free form may (services/predictor/feedback_lengths.py), and it rebuilds the file byte for byte from
../shared/data:

    metadata.json  "feedback/feedback-20261207.jsonl": "<sha256>"
                       |  docs/benchmarks/smollm2/lengths/feedback-20261207.lengths.jsonl + ../shared/data
                       v  (restore_each, as `alise predictor feedback-lengths restore`)
    <cache root>/feedback/feedback-20261207.jsonl     (sha256 == the metadata's, else ValueError)

The cache root is the simulator's prediction cache's (~/.cache/alise; $ALISE_CACHE_DIR overrides it): a
cached copy with the metadata's sha256 is used as is, any other is replaced, written whole (temporary
file + rename) so a concurrent reader never sees half a file. A model trained on a feedback file the
repository has no lengths file for (the default trained on the lost feedback-20261206a and -b) cannot be
rebuilt: FileNotFoundError naming every such file.
"""

from __future__ import annotations

import json
import os
import pathlib
import uuid
from dataclasses import dataclass
from typing import Sequence

from services.cli.feedback_lengths_cmd import restore_each
from services.common.cache_dir import default_cache_dir
from services.common.run_info import REPO_ROOT
from services.predictor.feedback_lengths import parse_lengths, sha256_hex

LENGTHS_DIR_IN_REPO = pathlib.PurePosixPath("docs/benchmarks/smollm2/lengths")  # <stem>.lengths.jsonl per file
LENGTHS_DIR = REPO_ROOT / LENGTHS_DIR_IN_REPO
FEEDBACK_KEY_PREFIX = "feedback/"  # metadata.json's data_files_sha256 key of a feedback file: feedback/<name>
CACHE_SUBDIR = "feedback"  # under the cache root, next to the predictions' sim-predictions
LENGTHS_SUFFIX = ".lengths.jsonl"


@dataclass(frozen=True)
class TrainedFeedbackFile:
    """One feedback file a model trained on, as its metadata.json records it."""

    name: str  # the file's name, e.g. feedback-20261207.jsonl (the metadata key without FEEDBACK_KEY_PREFIX)
    sha256: str  # the trained file's sha256, hex

    @property
    def lengths_path(self) -> pathlib.Path:
        """Where the repository keeps its text-free form (it may not exist)."""
        return LENGTHS_DIR / (pathlib.PurePosixPath(self.name).stem + LENGTHS_SUFFIX)


def trained_feedback_files(model_dir: pathlib.Path) -> list[TrainedFeedbackFile]:
    """The model's feedback files in metadata order (none when it trained on the datasets only)."""
    metadata = json.loads((pathlib.Path(model_dir) / "metadata.json").read_text())
    return [
        TrainedFeedbackFile(key.removeprefix(FEEDBACK_KEY_PREFIX), sha)
        for key, sha in metadata["data_files_sha256"].items()
        if key.startswith(FEEDBACK_KEY_PREFIX)
    ]


def not_in_repository(files: list[TrainedFeedbackFile]) -> list[TrainedFeedbackFile]:
    """The files without a lengths file in the repository: they cannot be restored."""
    return [file for file in files if not file.lengths_path.is_file()]


def not_restorable_reason(missing: list[TrainedFeedbackFile]) -> str:
    """The end of a sentence that starts "<whose> feedback files": which ones the repository cannot restore."""
    names = ", ".join(file.name for file in missing)
    verb = "has" if len(missing) == 1 else "have"
    return f"are not restorable from the repository: {names} {verb} no lengths file in {LENGTHS_DIR_IN_REPO}"


def shipped_feedback_files(
    model_dir: pathlib.Path, *, data_dir: pathlib.Path | None = None, cache_dir: pathlib.Path | None = None
) -> list[pathlib.Path]:
    """The model's feedback files, restored (or found restored) under the cache root, in metadata order.

    data_dir: ../shared/data (None: workload.resolve_data_dir's default); cache_dir: the cache root (None:
    default_cache_dir()). FileNotFoundError when one has neither a valid cached copy nor a lengths file;
    ValueError (FeedbackLengthsError included) when a restore does not give the metadata's sha256.
    """
    from services.bench.workload import resolve_data_dir

    folder = (cache_dir or default_cache_dir()) / CACHE_SUBDIR
    files = trained_feedback_files(model_dir)
    stale = [file for file in files if not _is_cached(folder / file.name, file.sha256)]
    paths = [folder / file.name for file in files]
    if not stale:
        return paths
    missing = not_in_repository(stale)
    if missing:
        raise FileNotFoundError(f"{model_dir}: feedback files {not_restorable_reason(missing)}")
    lengths = [parse_lengths(file.lengths_path.read_text(encoding="utf-8")) for file in stale]
    for file, (_, restored, _) in zip(stale, restore_each(lengths, resolve_data_dir(data_dir)), strict=True):
        if sha256_hex(restored) != file.sha256:
            raise ValueError(
                f"{file.lengths_path} restores a file with sha256 {sha256_hex(restored)}, not the "
                f"{file.sha256} {model_dir} trained on as {file.name}"
            )
        _write_whole(folder / file.name, restored)
    return paths


def given_or_shipped(
    model_dir: pathlib.Path,
    feedback_files: Sequence[pathlib.Path] | None,
    *,
    data_dir: pathlib.Path | None = None,
    cache_dir: pathlib.Path | None = None,
) -> list[pathlib.Path]:
    """The given feedback files, or (None) the model's own restored from the repository (shipped_feedback_files):
    what the held-out traces' loaders take as their feedback_files argument."""
    if feedback_files is None:
        return shipped_feedback_files(model_dir, data_dir=data_dir, cache_dir=cache_dir)
    return [pathlib.Path(path) for path in feedback_files]


def _is_cached(path: pathlib.Path, sha256: str) -> bool:
    return path.is_file() and sha256_hex(path.read_bytes()) == sha256


def _write_whole(path: pathlib.Path, data: bytes) -> None:
    """Replaces path with data through a temporary file in its folder (named for this writer, so concurrent
    writers never share one) and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
