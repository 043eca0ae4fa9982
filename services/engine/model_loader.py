"""Loads the causal LM the engine serves: a Hugging Face model, or the embedded default.

The default is a small Llama-architecture model with random weights ("dummy" weights, like vLLM's
`--load-format dummy`): weights cannot be downloaded on the machines we run on, and throughput and
scheduling do not depend on weight values. It pairs with the "default" tokenizer (Mistral 7B v0.1's
32,000-token SentencePiece model, BOS 1, EOS 2), so the gateway can turn text into its ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "alise-tiny-llama-dummy"
# Architectures whose decoder layers the model runner knows how to drive over a paged cache.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, plus the facts the engine reports about it."""

    model: torch.nn.Module  # a *ForCausalLM in eval mode on its device
    model_name: str  # reported by GetModelInfo
    tokenizer: str  # what the gateway should load: "default" or a path / hub id
    max_context_tokens: int  # prompt + output tokens per request at most
    vocab_size: int  # valid token ids are [0, vocab_size)
    eos_token_id: int | None  # ends generation unless ignore_eos


def default_model_config():
    """Config of the embedded default model: 4 layers, GQA (4 query heads, 2 KV heads), 32k vocab."""
    from transformers import LlamaConfig

    return LlamaConfig(
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
    )


def load_model(spec: str, *, dtype: torch.dtype, device: torch.device, seed: int) -> LoadedModel:
    """Loads "default" (random weights from `seed`) or a Hugging Face directory / hub id."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if spec == DEFAULT_MODEL:
        config = default_model_config()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        name, tokenizer = DEFAULT_MODEL_NAME, "default"
    else:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
        config = model.config
        name, tokenizer = spec, spec
    architecture = type(model).__name__
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"model architecture {architecture} is not supported; use one of {SUPPORTED_ARCHITECTURES}")
    model = model.to(device=device, dtype=dtype).eval()
    eos = config.eos_token_id
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return LoadedModel(model, name, tokenizer, config.max_position_embeddings, config.vocab_size, eos)
