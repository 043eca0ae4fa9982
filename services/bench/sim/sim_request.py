"""Engine requests for simulated work: the same Request class the engine runs, minus the text."""

from __future__ import annotations

from services.engine.length_distribution import LengthDistribution
from services.engine.request import Request, SamplingOptions

SIM_PROMPT_TOKEN_ID = 0  # token ids do not matter to the scheduler, only counts


def make_sim_request(
    request_id: str,
    *,
    num_prompt_tokens: int,
    num_output_tokens: int,
    arrival_time_s: float,
    prediction: LengthDistribution,
) -> Request:
    """A request that produces exactly num_output_tokens (ignore_eos, max_tokens = the true length),
    as in vLLM's benchmark method, so srpt-oracle's max_tokens is the truth."""
    sampling = SamplingOptions(
        max_tokens=num_output_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=True
    )
    return Request(
        request_id=request_id,
        prompt_token_ids=[SIM_PROMPT_TOKEN_ID] * num_prompt_tokens,
        sampling=sampling,
        arrival_time_s=arrival_time_s,
        predicted_output_tokens=prediction.mean_tokens,
        length_distribution=prediction,
    )
