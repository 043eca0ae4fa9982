"""Histogram buckets shared by the services, so the gateway's and the engine's series aggregate.

Latency buckets span a fast GPU (milliseconds per token) to a loaded CPU (seconds per token);
token buckets follow a 1-2-5 series up to the longest contexts served. Prometheus estimates a
quantile by interpolating inside a bucket, so buckets are densest where SLOs are usually set
(TTFT 0.1-2 s, inter-token 10-200 ms).
"""

from __future__ import annotations


def one_two_five(upper: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to and including the first value >= upper."""
    bounds: list[int] = []
    decade = 1
    while True:
        for multiple in (1, 2, 5):
            bounds.append(multiple * decade)
            if bounds[-1] >= upper:
                return tuple(bounds)
        decade *= 10


TIME_TO_FIRST_TOKEN_S = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
)
INTER_TOKEN_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
REQUEST_S = (
    0.1,
    0.25,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
)
# Calls with a deadline of tens of milliseconds (the gateway's predictor call, one ONNX batch).
SHORT_CALL_S = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
TOKENS = one_two_five(131_072)
BATCH_SIZE = one_two_five(1024)
