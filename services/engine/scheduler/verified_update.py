"""Applying a speculative verify's outcome to its request (Scheduler.update, for a chunk with drafts).

A verify fed k drafts and got back len(new_tokens) = accepted + 1 tokens (spec/verification.py). The
KV written at the rejected drafts' positions is not the request's: num_computed_tokens steps back
over them and their blocks go back to the pool (KvBlockManager.trim). Tokens are appended one by
one, so EOS or a length limit inside them ends the request at that token; the rest are dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.engine.request import Request
from services.engine.scheduler.output import ScheduledChunk, StepResult

if TYPE_CHECKING:  # the scheduler imports this module
    from services.engine.scheduler.scheduler import Scheduler


def apply_verified(
    scheduler: Scheduler, request: Request, chunk: ScheduledChunk, new_tokens: list[int], now_s: float
) -> StepResult:
    """Appends the verify's tokens to `request` (finishing it if one of them ends it) and rolls its KV
    back over the rejected drafts; the step's result for it."""
    request.num_computed_tokens -= chunk.num_draft_tokens + 1 - len(new_tokens)
    if request.first_token_time_s is None:
        request.first_token_time_s = now_s
    output_ids = request.output_token_ids
    for count, token_id in enumerate(new_tokens, 1):
        output_ids.append(token_id)
        reason = scheduler._finish_reason(request, token_id)
        if reason is not None:
            scheduler._finish_after_step(request, reason)
            return StepResult(request.request_id, new_tokens[:count], reason)
    scheduler.kv.trim(request.request_id, request.num_computed_tokens)
    return StepResult(request.request_id, new_tokens, None)
