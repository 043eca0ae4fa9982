"""Loading the served predictor, and swapping in a new model file without dropping requests.

    trainer writes model.onnx, then metadata.json (atomic renames, artifact.py)
        -> watcher sees metadata.json / model.onnx change (mtime, size), or ReloadModel RPC
        -> new LengthPredictor built fully in a worker thread (session created, sha256 checked)
        -> one attribute assignment swaps it in

Invariants: `predict` reads `current` once per batch, so a batch that started on the old model
finishes on it (the old session lives until its last batch drops it); requests never see a
half-loaded model; a model that fails to load (bad file, wrong inputs) is logged and counted
and the old one keeps serving. The prompt embedder is shared across reloads when the new model
uses the same embedding; a fine-tuned encoder's shared bottom graph likewise (its top graph is
the model's own encoder.onnx, loaded with the model).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from services.predictor.artifact import ENCODER_FILE_NAME, METADATA_FILE_NAME, ONNX_FILE_NAME, TEXT_HEADS_FILE_NAME
from services.predictor.embedding import EmbeddingSpec, PromptEmbedder
from services.predictor.finetune_encoder import EncoderSpec, FinetunedEncoder, FrozenBottom
from services.predictor.model import LengthDistribution, LengthModel, LengthPredictor, PromptInput

log = logging.getLogger(__name__)

SETTLE_S = 0.2  # files must look the same this long before a watcher reloads them
FileSignature = tuple[tuple[int, int], ...]  # (mtime_ns, size) of each watched file


@dataclass(frozen=True)
class LoadSettings:
    """What loading a predictor needs (from PredictorConfig)."""

    model_dir: Path  # directory holding model.onnx + metadata.json
    cache_dir: Path  # where the embedding graph is cached (built on first use)
    tree_threads: int  # ONNX Runtime threads of the tree graph
    embedding_threads: int  # prompts of a batch embedded at once, one core each
    allow_cuda: bool  # use the CUDA execution provider when onnxruntime has it
    default_generator: str = ""  # generator column for requests that name none; "" = the model's default
    lone_prompt_threads: int = 1  # intra-op threads of a prompt that arrives alone (lone_prompt.AUTO: measured)


def spec_from_version(version: str) -> EmbeddingSpec:
    """The EmbeddingSpec whose version string this is; ValueError for one this code cannot build."""
    default = EmbeddingSpec()
    prefix, _, max_tokens = version.rpartition("-t")
    if max_tokens.isdigit():
        spec = EmbeddingSpec(max_tokens=int(max_tokens))
        if spec.version == version:
            return spec
    raise ValueError(f"model needs embedding {version!r}; this code builds {default.version!r}-like ones")


def file_signature(model_dir: Path) -> FileSignature:
    """Changes whenever any model file is replaced; (-1, -1) for a missing one (no encoder.onnx)."""
    signature = []
    for name in (ONNX_FILE_NAME, TEXT_HEADS_FILE_NAME, ENCODER_FILE_NAME, METADATA_FILE_NAME):
        try:
            stat = (model_dir / name).stat()
            signature.append((stat.st_mtime_ns, stat.st_size))
        except FileNotFoundError:
            signature.append((-1, -1))
    return tuple(signature)


class PredictorLoader:
    """Builds LengthPredictors from settings, keeping one embedder per embedding version."""

    def __init__(self, settings: LoadSettings) -> None:
        self.settings = settings
        self._embedders: dict[str, PromptEmbedder] = {}
        self._bottoms: dict[str, FrozenBottom] = {}  # fine-tuned encoders' shared bottom graph, by version

    def load(self) -> LengthPredictor:
        """A ready predictor for the model directory as it is now (blocking: seconds at most)."""
        settings = self.settings
        model = LengthModel(settings.model_dir, intra_op_threads=settings.tree_threads, allow_cuda=settings.allow_cuda)
        version = model.metadata.embedding_version
        embedder = None
        if model.metadata.encoder_version:
            embedder = self._encoder(model)
        elif version:
            embedder = self._embedders.get(version)
            if embedder is None:
                embedder = PromptEmbedder(
                    spec_from_version(version),
                    cache_dir=settings.cache_dir,
                    num_threads=settings.embedding_threads,
                    allow_cuda=settings.allow_cuda,
                    lone_prompt_threads=settings.lone_prompt_threads,
                )
                self._embedders = {version: embedder}  # an old version's session is released
        return LengthPredictor(model, embedder, settings.default_generator)

    def _encoder(self, model: LengthModel) -> FinetunedEncoder:
        """The model's fine-tuned encoder: its encoder.onnx on the (shared) bottom graph."""
        settings, version = self.settings, model.metadata.encoder_version
        bottom = self._bottoms.get(version)
        if bottom is None:
            bottom = FrozenBottom(
                EncoderSpec.from_version(version), cache_dir=settings.cache_dir, allow_cuda=settings.allow_cuda
            )
            self._bottoms = {version: bottom}  # an old version's session is released
        return FinetunedEncoder(
            bottom,
            settings.model_dir / ENCODER_FILE_NAME,
            num_threads=settings.embedding_threads,
            expected_sha256=model.metadata.encoder_sha256,
            allow_cuda=settings.allow_cuda,
            lone_prompt_threads=settings.lone_prompt_threads,
        )


class ModelHolder:
    """The predictor serving now; reloads it on request or when its files change."""

    def __init__(self, loader: PredictorLoader, initial: LengthPredictor) -> None:
        self._loader = loader
        self.current = initial  # swapped by one assignment; read once per batch
        self._signature = file_signature(loader.settings.model_dir)
        self._lock = asyncio.Lock()  # one reload at a time
        self.num_reloads = 0  # successful swaps to a different model
        self.num_failed_reloads = 0  # attempts whose model did not load (old one kept)
        self.last_reload_error = ""  # why the latest attempt failed ("" when it did not)

    @classmethod
    async def open(cls, loader: PredictorLoader) -> "ModelHolder":
        return cls(loader, await asyncio.to_thread(loader.load))

    def predict(self, inputs: Sequence[PromptInput]) -> list[LengthDistribution]:
        """Predicts with the model current at the call (the batcher's predict function)."""
        return self.current.predict(inputs)

    async def reload(self) -> bool:
        """Loads the directory again; True when a different model now serves. Never raises."""
        async with self._lock:
            signature = file_signature(self._loader.settings.model_dir)
            try:
                candidate = await asyncio.to_thread(self._loader.load)
            except Exception as error:  # noqa: BLE001 - a bad file must not take the service down
                self.num_failed_reloads += 1
                self.last_reload_error = str(error)
                self._signature = signature  # do not retry the same broken files every poll
                log.error(
                    "model reload from %s failed, still serving %s: %s",
                    self._loader.settings.model_dir,
                    self.current.model_version,
                    error,
                )
                return False
            self._signature = signature
            self.last_reload_error = ""
            if candidate.model_version == self.current.model_version:
                return False
            log.info("model %s replaced by %s", self.current.model_version, candidate.model_version)
            self.current = candidate
            self.num_reloads += 1
            return True

    async def watch(self, poll_interval_s: float) -> None:
        """Reloads whenever the model files change; runs until cancelled."""
        model_dir = self._loader.settings.model_dir
        while True:
            await asyncio.sleep(poll_interval_s)
            seen = file_signature(model_dir)
            if seen == self._signature:
                continue
            await asyncio.sleep(SETTLE_S)  # a copy in progress: wait until the files stop changing
            if file_signature(model_dir) == seen:
                await self.reload()
