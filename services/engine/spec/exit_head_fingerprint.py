"""Which model a set of exit heads was trained on: its config and a probe of a few weight values.

A head maps layer L's residual stream of ONE model into that model's last-layer space, so heads
must never run on another model (a different checkpoint of the same shape would draft garbage
and only show up as a low acceptance). The fingerprint is

    config:       the shape fields that must match exactly (architecture, sizes, vocab, eps)
    weight_probe: 64 values, 16 evenly spaced elements of each of four tensors (token embedding,
                  layer 0's input norm, the last layer's down projection, the final norm)

The probe is compared with a tolerance, not hashed: the engine may serve the bf16 checkpoint as
float32, bfloat16 or float16, and the values must match across those casts (bf16 -> fp16 rounds).
"""

from __future__ import annotations

import hashlib
import json

import torch

CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "rms_norm_eps",
    "tie_word_embeddings",
)
PROBE_ELEMENTS_PER_TENSOR = 16
PROBE_RTOL = 2e-2  # bf16 keeps ~3 significant digits; fp16 of a bf16 value is within 2^-11
PROBE_ATOL = 1e-4


class ExitHeadsMismatch(ValueError):
    """The heads were trained on another model than the one given."""


def _probe_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    body = model.model
    return [
        body.embed_tokens.weight,
        body.layers[0].input_layernorm.weight,
        body.layers[-1].mlp.down_proj.weight,
        body.norm.weight,
    ]


def weight_probe(model: torch.nn.Module) -> list[float]:
    """16 evenly spaced elements of each probe tensor, as Python floats (rounded to 6 digits)."""
    values: list[float] = []
    for tensor in _probe_tensors(model):
        flat = tensor.detach().reshape(-1)
        last = flat.numel() - 1
        steps = PROBE_ELEMENTS_PER_TENSOR - 1
        index = torch.tensor([i * last // steps for i in range(PROBE_ELEMENTS_PER_TENSOR)], device=flat.device)
        values += [round(float(v), 6) for v in flat.index_select(0, index).float().cpu()]
    return values


def config_fields(model: torch.nn.Module) -> dict[str, object]:
    """The config values heads depend on (JSON-ready; a float eps rounded to 9 significant digits)."""
    config = model.config
    fields: dict[str, object] = {"architecture": type(model).__name__}
    for key in CONFIG_KEYS:
        value = getattr(config, key, None)
        fields[key] = float(f"{value:.9g}") if isinstance(value, float) else value
    return fields


def model_fingerprint(model: torch.nn.Module) -> dict[str, object]:
    """{"config", "config_sha256", "weight_probe"}: what the artifact stores and check_fingerprint reads."""
    config = config_fields(model)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()
    return {"config": config, "config_sha256": digest, "weight_probe": weight_probe(model)}


def fingerprint_mismatch(model: torch.nn.Module, stored: dict) -> str | None:
    """Why `model` is not the model `stored` describes, or None when it is."""
    config = config_fields(model)
    wanted = stored.get("config", {})
    differing = sorted(key for key in set(config) | set(wanted) if config.get(key) != wanted.get(key))
    if differing:
        shown = ", ".join(f"{key}: model {config.get(key)!r} vs heads {wanted.get(key)!r}" for key in differing)
        return f"config differs ({shown})"
    probe = torch.tensor(weight_probe(model), dtype=torch.float64)
    stored_probe = torch.tensor(stored.get("weight_probe", []), dtype=torch.float64)
    if probe.shape != stored_probe.shape or not torch.allclose(probe, stored_probe, rtol=PROBE_RTOL, atol=PROBE_ATOL):
        return "weights differ (same shape, another checkpoint)"
    return None


def check_fingerprint(model: torch.nn.Module, stored: dict, source: str) -> None:
    """Raises ExitHeadsMismatch naming `source` when the heads were trained on another model."""
    reason = fingerprint_mismatch(model, stored)
    if reason is not None:
        raise ExitHeadsMismatch(f"exit heads {source} belong to another model: {reason}")
