"""How many cores a prompt that arrives alone runs on: one, or several where this CPU is faster so.

Why it is a choice and not a constant: a lone prompt's graph (32 word pieces, six MiniLM layers,
int8) has small matrices. On the Intel Xeon with AVX-512 VNNI the project first ran on, splitting it
over two intra-op threads was slower than one (8.2 ms vs 9.0 ms p50); on an AMD EPYC (Zen 2, AVX2,
no VNNI) the int8 products are ~2.4x slower and two threads cut the top graph from 8.6 ms to 6.2 ms
(docs/benchmarks/predictor/by-prompt-text/README.md, section 10). So the predictor measures it once
when a model loads (`AUTO`), or takes a fixed count.

Invariant: the choice changes speed only, never bits. ONNX Runtime's int8 products accumulate in
integers and its float steps work per row, so a run on several threads returns exactly what the
one-thread run does (tests/test_predictor_lone_prompt.py checks it on the served graphs). Batches
keep one thread per prompt, `num_threads` prompts at once, as before.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Callable

log = logging.getLogger(__name__)

AUTO = 0  # measure at load: several threads only where they beat one on this CPU
PROBE_ROUNDS = 7  # timed runs of each session, alternating, after one warm-up each
MIN_SPEEDUP = 1.1  # several threads must be this much faster, or a lone prompt keeps one core
PROBE_TEXT = " ".join(["predict"] * 512)  # fills any word-piece window, as long prompts do

Session = object  # an onnxruntime.InferenceSession (kept opaque: no onnxruntime import here)


def lone_prompt_session(
    single: Session,
    make_session: Callable[[int], Session],
    run_probe: Callable[[Session], object],
    *,
    requested_threads: int,
    max_threads: int,
) -> tuple[Session, int]:
    """(session, intra-op threads) a lone prompt runs on.

    single: the one-thread session batches use; make_session(n): the same graph on n threads;
    run_probe(session): one lone prompt through it. requested_threads: AUTO, or a fixed count
    (1 keeps `single`); max_threads bounds AUTO's candidate (the cores the embedder may use).
    """
    if requested_threads < 0:
        raise ValueError(f"lone prompt threads must be >= 0 (0 = measure), got {requested_threads}")
    threads = max_threads if requested_threads == AUTO else requested_threads
    if threads <= 1:
        return single, 1
    several = make_session(threads)
    if requested_threads != AUTO:
        return several, threads
    one_s, several_s = _median_times(single, several, run_probe)
    chosen = threads if one_s >= MIN_SPEEDUP * several_s else 1
    log.info(
        "lone prompts on %d thread(s): probe %.2f ms on 1, %.2f ms on %d", chosen, one_s * 1e3, several_s * 1e3, threads
    )
    return (several, threads) if chosen > 1 else (single, 1)


def _median_times(single: Session, several: Session, run_probe: Callable[[Session], object]) -> tuple[float, float]:
    """Median seconds of a probe run on each session, alternating so that drift hits both."""
    times: dict[int, list[float]] = {0: [], 1: []}
    for session in (single, several):
        run_probe(session)  # warm-up: first-run allocations and thread start
    for _ in range(PROBE_ROUNDS):
        for index, session in enumerate((single, several)):
            started = time.perf_counter()
            run_probe(session)
            times[index].append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])
