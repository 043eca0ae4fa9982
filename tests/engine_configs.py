"""An engine config for tests that start a real engine: the tiny random model on CPU, an OS-chosen port,
no drain, one torch thread; each test overrides what it is about."""

from __future__ import annotations

from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine.config import EngineConfig


def tiny_engine_config(**overrides) -> EngineConfig:
    fields = dict(
        port=0,
        drain_s=0.0,
        model=DUMMY_TINY_MODEL,
        dtype="float32",
        device="cpu",
        max_num_batched_tokens=256,
        cpu_threads=1,
    )
    fields.update(overrides)
    return EngineConfig(**fields)
