"""The manifest of a converted model directory: where it came from and the sha256 of every file.

Written last by the installer (so a directory without one is an interrupted conversion), read at
every load: a missing or changed file is a `ModelFilesError` naming the file and the command that
repairs it, never a confusing failure deep inside transformers.

    <cache>/models/smollm2-135m-instruct/
        alise-manifest.json   {"model", "source": {package, version, wheel_sha256, gguf_*},
                               "converted_with": {...}, "files": {name: {sha256, num_bytes}}}
        config.json  generation_config.json  model.safetensors
        tokenizer.json  tokenizer_config.json  chat_template.jinja
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

MANIFEST_NAME = "alise-manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
HASH_CHUNK_BYTES = 8 << 20


class ModelFilesError(Exception):
    """A model's files are missing, incomplete or corrupt; the message names the file and the fix."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, *, model: str, source: dict[str, Any], converted_with: dict[str, str]) -> Path:
    """Hashes every file of `directory` and writes the manifest beside them."""
    files = {
        path.name: {"sha256": sha256_file(path), "num_bytes": path.stat().st_size}
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != MANIFEST_NAME
    }
    manifest = {"model": model, "source": source, "converted_with": converted_with, "files": files}
    target = directory / MANIFEST_NAME
    target.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return target


def read_manifest(directory: Path, fix: str) -> dict[str, Any]:
    """The parsed manifest; ModelFilesError when it is missing or unreadable."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise ModelFilesError(f"{path} is missing (model not installed or conversion interrupted); fix: {fix}")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
        return manifest
    except (OSError, ValueError) as error:
        raise ModelFilesError(f"{path} is unreadable ({error}); fix: {fix}") from error


def verify_model_dir(
    directory: Path, fix: str, *, include: Callable[[str], bool] = lambda name: True
) -> dict[str, Any]:
    """Checks size and sha256 of every manifest file that `include` selects; returns the manifest."""
    manifest = read_manifest(directory, fix)
    for name, expected in sorted(manifest.get("files", {}).items()):
        if not include(name):
            continue
        path = directory / name
        if not path.is_file():
            raise ModelFilesError(f"{path} is missing; fix: {fix}")
        if path.stat().st_size != expected["num_bytes"] or sha256_file(path) != expected["sha256"]:
            raise ModelFilesError(f"{path} is corrupt (sha256 differs from {MANIFEST_NAME}); fix: {fix}")
    return manifest


def is_tokenizer_file(name: str) -> bool:
    """Files the gateway needs (everything but the weights)."""
    return not name.endswith(WEIGHT_SUFFIXES)
