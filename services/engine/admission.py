"""Checks an EngineServiceGenerateRequest and turns it into a domain Request.

The gateway validates first; the engine checks again because it is also callable directly and
must never crash on bad input.
"""

from __future__ import annotations

import math
import secrets
import time

from services.common.contracts import engine_service_pb2
from services.common.errors import InvalidRequest
from services.engine.length_distribution import LengthDistribution
from services.engine.request import Request, SamplingOptions

MAX_REQUEST_ID_CHARS = 256
# Scheduling prior when the request carries no prediction (tokens).
DEFAULT_PREDICTED_OUTPUT_TOKENS = 256.0


def build_request(
    message: engine_service_pb2.EngineServiceGenerateRequest, *, vocab_size: int, max_model_len: int
) -> Request:
    """Raises InvalidRequest naming the bad field."""
    request_id = message.request_id
    if not request_id or len(request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidRequest(f"request_id must have 1..{MAX_REQUEST_ID_CHARS} characters")
    prompt = list(message.prompt_token_ids)
    if not prompt:
        raise InvalidRequest("prompt_token_ids is empty")
    bad = next((t for t in prompt if t >= vocab_size), None)
    if bad is not None:
        raise InvalidRequest(f"prompt token id {bad} is outside the vocabulary [0, {vocab_size})")
    sampling = _sampling_options(message.sampling)
    if len(prompt) + sampling.max_tokens > max_model_len:
        raise InvalidRequest(
            f"prompt ({len(prompt)} tokens) + max_tokens ({sampling.max_tokens}) exceeds the model context "
            f"of {max_model_len} tokens"
        )
    distribution = _length_distribution(message)
    return Request(
        request_id=request_id,
        prompt_token_ids=prompt,
        sampling=sampling,
        arrival_time_s=time.monotonic(),
        predicted_output_tokens=distribution.mean_tokens,
        priority_class=int(message.priority_class),
        length_distribution=distribution,
    )


def _length_distribution(message) -> LengthDistribution:
    """The prediction's mean and quantiles, or the prior; a malformed prediction is rejected."""
    if not message.HasField("prediction") or not message.prediction.mean_tokens > 0:
        return LengthDistribution(DEFAULT_PREDICTED_OUTPUT_TOKENS)
    prediction = message.prediction
    quantiles = [(q.level, q.num_tokens) for q in prediction.quantiles]
    try:
        return LengthDistribution(float(prediction.mean_tokens), quantiles)
    except ValueError as error:
        raise InvalidRequest(f"prediction: {error}") from None


def _sampling_options(params) -> SamplingOptions:
    if not params.HasField("max_tokens") or params.max_tokens <= 0:
        raise InvalidRequest("sampling.max_tokens must be set and > 0")
    temperature = params.temperature if params.HasField("temperature") else 1.0
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidRequest(f"sampling.temperature must be a finite number >= 0, got {temperature}")
    top_p = params.top_p if params.HasField("top_p") else 1.0
    if not (0.0 < top_p <= 1.0):
        raise InvalidRequest(f"sampling.top_p must be in (0, 1], got {top_p}")
    if params.top_k < 0:
        raise InvalidRequest(f"sampling.top_k must be >= 0, got {params.top_k}")
    if not 0 <= params.min_tokens <= params.max_tokens:
        raise InvalidRequest(
            f"sampling.min_tokens must be in [0, max_tokens={params.max_tokens}], got {params.min_tokens}"
        )
    return SamplingOptions(
        max_tokens=params.max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=params.top_k,
        seed=params.seed if params.HasField("seed") else secrets.randbits(63),  # contract: unset = fresh
        ignore_eos=params.ignore_eos,
        min_tokens=params.min_tokens,
        speculative=params.speculative if params.HasField("speculative") else True,
    )
