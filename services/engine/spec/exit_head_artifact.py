"""The exit-head artifact on disk: `<model>.npz` (the weights) + `<model>.json` (what they are).

    heads/smollm2-135m-instruct.npz    layer{L}.down  float16 [rank, hidden]   per candidate L
                                       layer{L}.up    float16 [hidden, rank]
                                       draft_vocab_ids int32 [num_draft_tokens] (ascending; absent = full vocab)
    heads/smollm2-135m-instruct.json   format_version, model, fingerprint, layers, rank, recipe, data
                                       split, agreement (before/after training), costs, npz_sha256

The npz is written with fixed zip timestamps, so two runs of the same training write the same
bytes (and the same sha256). The json's npz_sha256 is checked at load: a truncated or edited npz
is refused instead of drafting garbage.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
SHIPPED_DIR = Path(__file__).resolve().parent / "heads"
DRAFT_VOCAB_KEY = "draft_vocab_ids"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip date: no wall clock in the bytes


class ExitHeadArtifactError(ValueError):
    """The artifact files are missing pieces, corrupt, or of an unknown format version."""


@dataclass(frozen=True)
class HeadArrays:
    """One candidate layer's trained map: h + (h @ down^T) @ up^T."""

    down: np.ndarray  # float16 [rank, hidden]
    up: np.ndarray  # float16 [hidden, rank]


@dataclass(frozen=True)
class ExitHeadArtifact:
    """Everything the files hold, in memory."""

    metadata: dict  # the json document
    heads: dict[int, HeadArrays]  # by number of layers run before the head
    draft_vocab_ids: np.ndarray | None  # int32 ascending token ids the heads score; None = all


def artifact_paths(directory: Path, model_name: str) -> tuple[Path, Path]:
    """(npz, json) paths of a model's artifact in `directory`."""
    return directory / f"{model_name}.npz", directory / f"{model_name}.json"


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An np.load-able npz with sorted members and fixed timestamps (byte-identical for equal arrays)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH), member.getvalue())
    return buffer.getvalue()


def write_artifact(directory: Path, model_name: str, artifact: ExitHeadArtifact) -> tuple[Path, Path]:
    """Writes both files; the json gets the npz's sha256 and the format version. Returns the paths."""
    arrays: dict[str, np.ndarray] = {}
    for layer, head in sorted(artifact.heads.items()):
        arrays[f"layer{layer}.down"] = head.down.astype(np.float16)
        arrays[f"layer{layer}.up"] = head.up.astype(np.float16)
    if artifact.draft_vocab_ids is not None:
        arrays[DRAFT_VOCAB_KEY] = artifact.draft_vocab_ids.astype(np.int32)
    payload = _npz_bytes(arrays)
    metadata = dict(artifact.metadata, format_version=FORMAT_VERSION, layers=sorted(artifact.heads))
    metadata["npz_sha256"] = hashlib.sha256(payload).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    npz_path, json_path = artifact_paths(directory, model_name)
    npz_path.write_bytes(payload)
    json_path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return npz_path, json_path


def read_artifact(npz_path: Path, json_path: Path) -> ExitHeadArtifact:
    """Reads and checks both files (format version, sha256, one down/up pair per listed layer)."""
    try:
        metadata = json.loads(json_path.read_text(encoding="utf-8"))
        payload = npz_path.read_bytes()
    except (OSError, json.JSONDecodeError) as error:
        raise ExitHeadArtifactError(f"cannot read exit heads {json_path.name}: {error}") from error
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ExitHeadArtifactError(f"{json_path}: format_version {metadata.get('format_version')!r}, want 1")
    if hashlib.sha256(payload).hexdigest() != metadata.get("npz_sha256"):
        raise ExitHeadArtifactError(f"{npz_path}: sha256 differs from {json_path.name} (corrupt or replaced)")
    with np.load(io.BytesIO(payload), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    heads: dict[int, HeadArrays] = {}
    for layer in metadata.get("layers", []):
        try:
            heads[int(layer)] = HeadArrays(arrays[f"layer{layer}.down"], arrays[f"layer{layer}.up"])
        except KeyError as error:
            raise ExitHeadArtifactError(f"{npz_path}: no weights for layer {layer}") from error
    if not heads:
        raise ExitHeadArtifactError(f"{json_path}: lists no layers")
    return ExitHeadArtifact(metadata, heads, arrays.get(DRAFT_VOCAB_KEY))
