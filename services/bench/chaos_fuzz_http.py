"""Fuzzing the gateway's OpenAI HTTP routes: request bodies drawn at random, each posted once.

    near_valid   mostly-right requests (so the fuzzing also reaches tokenizing and generation)
    json shapes  objects of the routes' field names with values of any JSON type
    raw bytes    malformed JSON, invalid UTF-8, invalid UTF-8 inside a JSON string

A case passes when the gateway answers below 500 within the timeout (a 2xx for the valid ones, a
4xx with an OpenAI-shaped error otherwise); a streamed answer is closed after its status line,
which the gateway turns into a cancelled generation. Used by tests/test_fuzz_http.py (CI-sized)
and by the fuzz phase of `alise bench chaos` (N cases per route).

Generation is bounded (MAX_FUZZ_OUTPUT_TOKENS, and the stack's --default-max-tokens) so that "no
answer within the timeout" means a hang and not a long valid generation: the one /v1/completions
case of the 10,000-case run unanswered within 10 s was such a generation. A body without
max_tokens got the default of 256 clipped to the 256-token context, ~250 tokens, answered only at
the end (not streamed): measured 9.5 s for 253 tokens at load 11 under nice 19, past 10 s at the
run's load of 10-20. Failing bodies are kept (`RouteFuzz.failing_bodies`) so a case can be replayed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

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
# Valid generations end within a few seconds even on a loaded 2-core machine at nice 19 (32 tokens
# of the tiny model: ~1.2 s at load 11); larger max_tokens values are beyond the 256-token context
# of the fuzz stacks, so they test the room check (400) without generating.
MAX_FUZZ_OUTPUT_TOKENS = 32
MAX_KEPT_FAILING_BODIES = 10
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
        "max_tokens": st.integers(-3, MAX_FUZZ_OUTPUT_TOKENS) | st.integers(257, 10**6),
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


@dataclass
class RouteFuzz:
    """What fuzzing one route found."""

    statuses: dict[int, int] = field(default_factory=dict)  # HTTP status (NO_ANSWER for none) -> count
    failing_bodies: list[str] = field(default_factory=list)  # the first failing bodies, repr'd (<= 300 bytes each)
    slowest_answer_s: float = 0.0  # the longest time to an answer (status line) of any case that got one

    def record(self, body: bytes, status: int, elapsed_s: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if is_failing(status) and len(self.failing_bodies) < MAX_KEPT_FAILING_BODIES:
            self.failing_bodies.append(repr(body[:300]))
        if status != NO_ANSWER:
            self.slowest_answer_s = max(self.slowest_answer_s, elapsed_s)


def fuzz_route(session: requests.Session, url: str, num_cases: int, timeout_s: float) -> RouteFuzz:
    """num_cases bodies posted to url, each answer's status and time recorded."""
    found = RouteFuzz()

    @settings(max_examples=num_cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies)
    def fuzz(body: bytes) -> None:
        began_s = time.monotonic()
        try:
            status = post_body(session, url, body, timeout_s)
        except requests.RequestException:
            status = NO_ANSWER
        found.record(body, status, time.monotonic() - began_s)

    fuzz()
    return found
