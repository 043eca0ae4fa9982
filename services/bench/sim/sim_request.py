"""Engine requests for simulated work: the same Request class the engine runs, minus the text."""

from __future__ import annotations

from services.engine.length_distribution import LengthDistribution
from services.engine.request import Request, SamplingOptions

SIM_PROMPT_TOKEN_ID = 0  # token ids do not matter to the scheduler, only counts
SIM_EOS_TOKEN_ID = 2  # the simulated model "samples" it when a request reaches its true length


def make_sim_request(
    request_id: str,
    *,
    num_prompt_tokens: int,
    num_output_tokens: int,
    arrival_time_s: float,
    prediction: LengthDistribution,
    reveal_length: bool = False,
    max_model_len: int = 4096,
) -> Request:
    """A request that will produce exactly num_output_tokens.

    reveal_length=False: max_tokens is what the context allows and the simulator ends the request
    with EOS at its true length, so no policy can read the truth from max_tokens (vLLM's benchmark
    method sets max_tokens = true length, which would leak it to any policy that caps its estimate
    by max_tokens, as alise does). reveal_length=True (srpt-oracle only): max_tokens = the true
    length with ignore_eos, which is how the oracle learns it."""
    max_tokens = num_output_tokens if reveal_length else max(num_output_tokens, max_model_len - num_prompt_tokens)
    sampling = SamplingOptions(
        max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=reveal_length
    )
    return Request(
        request_id=request_id,
        prompt_token_ids=[SIM_PROMPT_TOKEN_ID] * num_prompt_tokens,
        sampling=sampling,
        arrival_time_s=arrival_time_s,
        predicted_output_tokens=prediction.mean_tokens,
        length_distribution=prediction,
    )
