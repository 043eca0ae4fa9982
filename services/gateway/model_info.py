"""What the gateway knows of the served model, fetched lazily from the engine and cached.

Why lazily: the gateway must start (and report SERVING for itself) while its engine is still
loading or down; requests meanwhile get UNAVAILABLE with a message naming the engine. Once a fetch
succeeds, the answer and the tokenizer it names are kept for the life of the process (an engine
replica serves one model). Failed fetches are retried, at most once per `retry_interval_s`, by
whichever request comes next; concurrent requests share one fetch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from services.common.errors import NotReady
from services.common.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """The engine's description of its model (EngineServiceGetModelInfoResponse as a domain object)."""

    model_name: str  # name of the loaded model, also sent to the predictor
    max_context_tokens: int  # prompt + output tokens per request, at most
    vocab_size: int  # valid token ids are [0, vocab_size)
    eos_token_id: int | None  # id that ends a sequence; None when the model has none
    tokenizer_spec: str  # what the engine says the gateway should load (a catalog name, "default", a directory)


@dataclass(frozen=True)
class ServedModel:
    """Model info plus the tokenizer loaded for it; immutable once built."""

    info: ModelInfo  # from the engine
    tokenizer: Tokenizer  # loaded once, shared by every request


class ServedModelCache:
    """Fetches ModelInfo from the engine on first use, loads the tokenizer, and caches both.

    Invariant: once `get()` has returned a ServedModel, it returns that same object forever.
    """

    def __init__(
        self,
        fetch_info: Callable[[], Awaitable[ModelInfo]],
        *,
        tokenizer_override: str,
        retry_interval_s: float,
        engine_address: str,
        load: Callable[[str], Tokenizer] = load_tokenizer,
    ) -> None:
        self._fetch_info = fetch_info  # one GetModelInfo call; raises on failure
        self._tokenizer_override = tokenizer_override  # "" = use the engine's tokenizer spec
        self._retry_interval_s = retry_interval_s
        self._engine_address = engine_address  # for error messages only
        self._load = load
        self._served: ServedModel | None = None
        self._last_error: NotReady | None = None
        self._last_failure_monotonic_s = float("-inf")
        self._lock = asyncio.Lock()

    @property
    def cached(self) -> ServedModel | None:
        """The served model when already fetched, else None (never fetches)."""
        return self._served

    async def get(self) -> ServedModel:
        """The served model; raises NotReady (UNAVAILABLE) while it cannot be fetched."""
        if self._served is not None:
            return self._served
        async with self._lock:
            if self._served is not None:
                return self._served
            since_failure_s = time.monotonic() - self._last_failure_monotonic_s
            if self._last_error is not None and since_failure_s < self._retry_interval_s:
                raise self._last_error
            try:
                self._served = await self._fetch_and_load()
            except NotReady as error:
                self._last_error = error
                self._last_failure_monotonic_s = time.monotonic()
                raise
            log.info(
                "serving model %r (context %d tokens, vocab %d, tokenizer %r)",
                self._served.info.model_name,
                self._served.info.max_context_tokens,
                self._served.info.vocab_size,
                self._served.tokenizer.name,
            )
            return self._served

    async def _fetch_and_load(self) -> ServedModel:
        try:
            info = await self._fetch_info()
        except NotReady:
            raise
        except Exception as error:  # any failure to reach or parse the engine is "not ready"
            raise NotReady(
                f"engine unavailable: cannot fetch model info from {self._engine_address}: {error}"
            ) from error
        spec = self._tokenizer_override or info.tokenizer_spec
        if not spec:
            raise NotReady(f"engine at {self._engine_address} names no tokenizer and none is configured")
        try:
            tokenizer = await asyncio.to_thread(self._load, spec)
        except Exception as error:
            raise NotReady(f"cannot load tokenizer {spec!r}: {type(error).__name__}: {error}") from error
        if tokenizer.vocab_size > info.vocab_size:
            log.warning(
                "tokenizer %r has %d tokens but the engine's vocabulary has %d; "
                "text prompts producing ids beyond it are rejected",
                spec,
                tokenizer.vocab_size,
                info.vocab_size,
            )
        return ServedModel(info, tokenizer)
