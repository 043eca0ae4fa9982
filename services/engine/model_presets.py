"""Architecture shapes for random-weight models (`--model dummy:<preset>`, benchmarks).

Throughput does not depend on weight values, and real weights cannot be downloaded on the machines
we measure on, so benchmarks run real architectures with random weights (vLLM's
`--load-format dummy`). Each preset is the config of the public checkpoint, trimmed to what sets
the compute and memory shape.
"""

from __future__ import annotations

from typing import Any

# model_type picks the transformers config class; the rest are its fields.
ARCHITECTURE_PRESETS: dict[str, dict[str, Any]] = {
    "dummy-llama-tiny": dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    ),
    "smollm2-135m": dict(
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    ),
    "llama3-8b": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        bos_token_id=128000,
        eos_token_id=128001,
        tie_word_embeddings=False,
    ),
    "llama2-7b": dict(
        model_type="llama",
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    ),
    "mistral-7b": dict(
        model_type="mistral",
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        sliding_window=None,
    ),
    "qwen2-7b": dict(
        model_type="qwen2",
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        bos_token_id=151643,
        eos_token_id=151645,
        tie_word_embeddings=False,
    ),
}


def preset_config(name: str):
    """A transformers config object of the named preset (KeyError for an unknown name)."""
    from transformers import AutoConfig

    fields = dict(ARCHITECTURE_PRESETS[name])
    return AutoConfig.for_model(fields.pop("model_type"), **fields)
