"""KvCacheDtype: the element type of the engine's KV pool (--kv-cache-dtype).

Torch-free so that EngineConfig (and the CLI that imports it) stays light; kv_cache.py maps a
member to its torch dtype.
"""

from __future__ import annotations

from enum import StrEnum


class KvCacheDtype(StrEnum):
    """Element type of the KV pool."""

    AUTO = "auto"  # the model's dtype
    BF16 = "bf16"
    FP16 = "fp16"
    INT8 = "int8"  # symmetric int8, one float32 scale per (block, kv head), quantized on write
