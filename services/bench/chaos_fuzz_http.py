"""Fuzzing the gateway's OpenAI HTTP routes: request bodies drawn at random, each posted once.

    near_valid   mostly-right requests (so the fuzzing also reaches tokenizing and generation)
    json shapes  objects of the routes' field names with values of any JSON type
    raw bytes    malformed JSON, invalid UTF-8, invalid UTF-8 inside a JSON string

A case passes when the gateway answers below 500 within the timeout (a 2xx for the valid ones, a
4xx with an OpenAI-shaped error otherwise); a streamed answer is closed after its status line,
which the gateway turns into a cancelled generation. Used by tests/test_fuzz_http.py (CI-sized)
and by the fuzz phase of `alise bench chaos` (N cases per route).
"""

from __future__ import annotations

import json

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROUTES = ("/v1/completions", "/v1/chat/completions")
FIELDS = (
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "stream",
    "stop",
    "seed",
    "n",
    "logprobs",
    "stream_options",
    "timeout",
    "min_tokens",
    "user",
    "role",
    "content",
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=12,
)
near_valid = st.fixed_dictionaries(  # mostly-right requests, so the fuzzing also reaches generation
    {"model": st.sampled_from(["dummy-llama-tiny", "", "no-such-model"]), "prompt": st.text(max_size=60)},
    optional={
        "max_tokens": st.integers(-3, 300),
        "temperature": st.floats(),
        "top_p": st.floats(),
        "stream": st.booleans(),
        "stop": st.lists(st.text(max_size=5), max_size=20),
        "seed": st.integers(),
    },
).map(lambda d: json.dumps(d).encode())
bodies = st.one_of(
    near_valid,
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=300),  # malformed JSON, invalid UTF-8
    st.text(max_size=300).map(str.encode),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=8).map(
        lambda d: json.dumps(d).encode().replace(b'"', b'"\xff', 1)  # invalid UTF-8 inside a string
    ),
)


def post_body(session: requests.Session, url: str, body: bytes, timeout_s: float) -> int:
    """POSTs one body; the status code (a stream that started is closed here: the gateway cancels it)."""
    headers = {"content-type": "application/json"}
    with session.post(url, data=body, headers=headers, stream=True, timeout=timeout_s) as response:
        return response.status_code


NO_ANSWER = 0  # the status counted for a case without an HTTP answer (timeout, connection dropped)


def is_failing(status: int) -> bool:
    """A server error, or no answer at all."""
    return status >= 500 or status == NO_ANSWER


def fuzz_route(session: requests.Session, url: str, num_cases: int, timeout_s: float) -> dict[int, int]:
    """num_cases bodies posted to url: {HTTP status (NO_ANSWER for none): count}."""
    statuses: dict[int, int] = {}

    @settings(max_examples=num_cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies)
    def fuzz(body: bytes) -> None:
        try:
            status = post_body(session, url, body, timeout_s)
        except requests.RequestException:
            status = NO_ANSWER
        statuses[status] = statuses.get(status, 0) + 1

    fuzz()
    return statuses
