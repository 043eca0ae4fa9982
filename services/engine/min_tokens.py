"""min_tokens: no stop token before a request has this many output tokens (vLLM's `min_tokens`).

The engine ends a request when it samples the model's end-of-sequence token. While a request has
fewer than `sampling.min_tokens` output tokens, the logits of every stop token id of the model (the
EOS id, and the further ids a generation config may list) are set to -inf right before sampling, so
neither the greedy argmax nor a random draw can pick them. The gateway likewise applies stop
strings only from the min_tokens-th token on (services/gateway/generation.py).

The mask is one vectorised write over the whole logits batch [rows, vocab]: a per-row boolean
(`rows_below_min_tokens`) times a fixed list of token ids, with no per-row Python loop over logits
and no data-dependent shapes, so it also suits a persistent batch or a captured graph.
Invariant: rows whose request has min_tokens tokens already (or min_tokens 0) are left bit-identical.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from services.engine.request import Request


def model_stop_token_ids(model: torch.nn.Module) -> tuple[int, ...]:
    """Every end-of-sequence id the model declares (generation config first, then model config), deduplicated."""
    found: list[int] = []
    generation = getattr(model, "generation_config", None)
    for eos in (getattr(generation, "eos_token_id", None), getattr(model.config, "eos_token_id", None)):
        ids = eos if isinstance(eos, (list, tuple)) else [eos]
        found.extend(int(token_id) for token_id in ids if token_id is not None and int(token_id) not in found)
    vocab_size = getattr(model.config, "vocab_size", None)
    return tuple(t for t in found if t >= 0 and (vocab_size is None or t < vocab_size))


def stop_token_tensor(stop_token_ids: Iterable[int], device: torch.device) -> torch.Tensor:
    """int64 [num_stop_ids] on the logits' device, made once per engine."""
    return torch.tensor(list(stop_token_ids), dtype=torch.long, device=device)


def rows_below_min_tokens(requests: Sequence[Request], device: torch.device) -> torch.Tensor:
    """bool [rows]: True where the row's request has fewer output tokens than its min_tokens."""
    below = [request.num_output_tokens < request.sampling.min_tokens for request in requests]
    return torch.tensor(below, dtype=torch.bool, device=device)


def mask_stop_tokens(logits: torch.Tensor, row_mask: torch.Tensor, stop_token_ids: torch.Tensor) -> torch.Tensor:
    """In place and returned: logits[r, t] = -inf for every row r with row_mask[r] and every t in stop_token_ids.

    logits [rows, vocab] (any float dtype); row_mask bool [rows]; stop_token_ids int64 [k].
    """
    if stop_token_ids.numel() == 0:
        return logits
    columns = logits[:, stop_token_ids]  # [rows, k] (a copy)
    masked = torch.where(row_mask[:, None], torch.full_like(columns, float("-inf")), columns)
    logits[:, stop_token_ids] = masked
    return logits


def apply_min_tokens(logits: torch.Tensor, requests: Sequence[Request], stop_token_ids: torch.Tensor) -> torch.Tensor:
    """The engine's hook: masks the stop tokens of rows below their min_tokens (a no-op when no row uses it).

    requests[r] is the request whose next token row r of logits samples.
    """
    if stop_token_ids.numel() == 0 or not any(request.sampling.min_tokens > 0 for request in requests):
        return logits
    return mask_stop_tokens(logits, rows_below_min_tokens(requests, logits.device), stop_token_ids)
