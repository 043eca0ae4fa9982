"""Loads the causal LM the engine serves, by the names of services/common/model_catalog.py.

- smollm2-135m-instruct (the default): the converted directory in the alise cache, its files
  checked against the install manifest first; weights are bf16 on disk, cast to the engine's dtype.
- dummy-llama-tiny: a 4-layer random-weight Llama paired with the "default" SentencePiece
  tokenizer (Mistral 7B v0.1's, BOS 1, EOS 2): what tests and CPU benchmarks run.
- dummy:<preset or dir>: random weights of a real architecture (services/engine/model_presets.py).
- a local Hugging Face Llama / Mistral / Qwen2 directory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.common.model_catalog import (
    DUMMY_TINY_MODEL,
    SENTENCEPIECE_DEFAULT_TOKENIZER,
    ModelSource,
    ModelSpec,
    parse_model_spec,
)
from services.common.model_manifest import ModelFilesError, verify_model_dir
from services.common.tokenizer import Tokenizer, load_tokenizer
from services.engine.model_presets import ARCHITECTURE_PRESETS, preset_config

# Architectures whose decoder layers the model runner knows how to drive over a paged cache.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
# The catalog model whose shape a `dummy:` preset of the same name copies.
CATALOG_SHAPE_PRESETS = {"smollm2-135m-instruct": "smollm2-135m"}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, plus the facts the engine reports about it."""

    model: torch.nn.Module  # a *ForCausalLM in eval mode on its device
    model_name: str  # reported by GetModelInfo
    tokenizer: str  # what the gateway should load: a catalog name, "default" or a directory
    max_context_tokens: int  # prompt + output tokens per request at most
    vocab_size: int  # valid token ids are [0, vocab_size)
    eos_token_id: int | None  # ends generation unless ignore_eos
    has_chat_template: bool = False  # the tokenizer renders chat messages


def load_model(spec: str, *, dtype: torch.dtype, device: torch.device, seed: int) -> LoadedModel:
    """Loads the model a --model value names; ValueError / ModelFilesError say what is wrong."""
    parsed = parse_model_spec(spec, frozenset(ARCHITECTURE_PRESETS))
    if parsed.source in (ModelSource.CATALOG, ModelSource.LOCAL_DIRECTORY):
        model, tokenizer = _load_pretrained(parsed, dtype), load_tokenizer(parsed.name)
    else:
        model, tokenizer = _random_model(parsed, seed), _dummy_tokenizer(parsed)
    architecture = type(model).__name__
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"model architecture {architecture} is not supported; use one of {SUPPORTED_ARCHITECTURES}")
    model = model.to(device=device, dtype=dtype).eval()
    config = model.config
    return LoadedModel(
        model,
        parsed.name,
        tokenizer.name,
        config.max_position_embeddings,
        config.vocab_size,
        _eos_token_id(model),
        has_chat_template=tokenizer.chat_template is not None,
    )


def _load_pretrained(parsed: ModelSpec, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    directory = parsed.path
    if parsed.catalog is not None:
        directory = parsed.catalog.install_dir()
        verify_model_dir(directory, f"run scripts/install.sh, or python -m services.engine.model_install {parsed.name}")
    return AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype)


def _random_model(parsed: ModelSpec, seed: int) -> torch.nn.Module:
    """Random weights drawn from `seed` (the same weights for the same seed and architecture)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if parsed.source is ModelSource.DUMMY_TINY:
        config = preset_config(DUMMY_TINY_MODEL)
    elif parsed.path is not None:
        config = AutoConfig.from_pretrained(str(parsed.path))
    else:
        config = preset_config(CATALOG_SHAPE_PRESETS.get(parsed.preset, parsed.preset))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config)


def _dummy_tokenizer(parsed: ModelSpec) -> Tokenizer:
    """A random model's tokenizer: its directory's or catalog model's when present, else "default"."""
    if parsed.path is not None and (parsed.path / "tokenizer.json").is_file():
        return load_tokenizer(str(parsed.path))
    if parsed.catalog is not None:
        try:
            return load_tokenizer(parsed.catalog.name)
        except (ModelFilesError, OSError, ValueError):
            pass
    return load_tokenizer(SENTENCEPIECE_DEFAULT_TOKENIZER)


def _eos_token_id(model: torch.nn.Module) -> int | None:
    """The generation config's EOS (what generate() stops at), else the model config's; first of a list."""
    generation = getattr(model, "generation_config", None)
    eos = getattr(generation, "eos_token_id", None)
    if eos is None:
        eos = model.config.eos_token_id
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return eos
