"""Embeddings of training and evaluation prompts, computed once per machine and kept on disk.

Embedding ~10k prompts takes minutes on 2 cores; training runs and evaluations repeat them, so
vectors are stored by sha256 of the prompt text in one .npz per embedding graph:

    <cache_dir>/embeddings/<EmbeddingSpec.version>-<graph sha256[:12]>.npz   keys [n, 16] uint8, vectors [n, 384]

Keying by the graph file's hash (not only the spec) means a re-exported graph never mixes its
vectors with an older one's: cached and freshly computed embeddings are always the same numbers.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from services.predictor.embedding import EMBEDDING_DIM, PromptEmbedder, file_lock

PROGRESS_EVERY = 500  # print a progress line after this many new embeddings
CHUNK_PROMPTS = 100  # new prompts handed to the embedder at once (its cores share them)


def _key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:16]


def _graph_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class EmbeddingCache:
    """Text -> embedding vector, backed by an .npz file that `save` rewrites atomically."""

    def __init__(self, embedder: PromptEmbedder, cache_dir: Path) -> None:
        self._embedder = embedder
        graph_sha256 = _graph_sha256(embedder.graph_path)
        self.path = cache_dir / "embeddings" / f"{embedder.spec.version}-{graph_sha256[:12]}.npz"
        self._vectors: dict[bytes, np.ndarray] = self._stored()
        self._num_new = 0

    def _stored(self) -> dict[bytes, np.ndarray]:
        if not self.path.is_file():
            return {}
        with np.load(self.path) as stored:
            return {key.tobytes(): vector for key, vector in zip(stored["keys"], stored["vectors"])}

    def embed(self, texts: Sequence[str], progress: Callable[[str], None] = print) -> np.ndarray:
        """float32 [len(texts), vector size]; computes (and remembers) the ones not cached."""
        missing = list(dict.fromkeys(text for text in texts if _key(text) not in self._vectors))
        if missing:
            progress(f"embedding {len(missing)} new prompts ({len(texts) - len(missing)} cached) ...")
        started = time.perf_counter()
        for begin in range(0, len(missing), CHUNK_PROMPTS):
            chunk = missing[begin : begin + CHUNK_PROMPTS]
            for text, vector in zip(chunk, self._embedder.embed(chunk)):
                self._vectors[_key(text)] = vector
            done = begin + len(chunk)
            if done // PROGRESS_EVERY > begin // PROGRESS_EVERY:
                rate = done / (time.perf_counter() - started)
                progress(f"  {done}/{len(missing)} embedded ({rate:.0f}/s)")
        self._num_new += len(missing)
        if missing:
            self.save()
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        # Stacked, not filled into [n, EMBEDDING_DIM]: a fine-tuned encoder's vectors are its G scores.
        return np.stack([self._vectors[_key(text)] for text in texts]).astype(np.float32)

    def save(self) -> None:
        """Merges with what another process saved meanwhile, then writes (lock + atomic rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_suffix(".lock")):
            self._vectors = {**self._stored(), **self._vectors}
            self._write()

    def _write(self) -> None:
        # uint8 rows, not an "S16" array: numpy strips trailing NUL bytes from bytes_ values
        keys = np.frombuffer(b"".join(self._vectors), dtype=np.uint8).reshape(-1, 16)
        vectors = np.zeros((0, EMBEDDING_DIM), np.float32)
        if self._vectors:
            vectors = np.stack(list(self._vectors.values())).astype(np.float32)
        with tempfile.NamedTemporaryFile(dir=self.path.parent, suffix=".npz", delete=False) as stream:
            np.savez(stream, keys=keys, vectors=vectors)
            temporary = stream.name
        os.chmod(temporary, 0o644)
        os.replace(temporary, self.path)
