"""Where one prediction's time goes, stage by stage, in process (part of `alise predictor bench`).

    round trip (predictor_bench.py)  =  gRPC + micro-batcher hop  +  predict (in process)
    predict                          =  tokenize + embedding graph + lexical features + text heads + trees

Each stage runs `num_calls` times in a row on the bench prompt; both wall time (p50) and this
process's CPU time per call (all threads) are reported, because on a shared machine wall time
grows with other people's load while CPU time mostly does not. The embedding graph's figure is
`embed` minus `tokenize` (embed tokenizes first). Asserts nothing.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from services.predictor import features
from services.predictor.model import LengthPredictor, PromptInput


def _timed(call: Callable[[], object], num_calls: int) -> dict[str, float]:
    """p50 wall ms and mean CPU ms (process, all threads) of num_calls calls."""
    wall_s = []
    cpu_started = time.process_time()
    for _ in range(num_calls):
        started = time.perf_counter()
        call()
        wall_s.append(time.perf_counter() - started)
    cpu_ms = (time.process_time() - cpu_started) * 1e3 / num_calls
    return {"wall_p50_ms": round(float(np.median(wall_s)) * 1e3, 3), "cpu_ms": round(cpu_ms, 3)}


def measure_stages(predictor: LengthPredictor, text: str, num_prompt_tokens: int, num_calls: int) -> dict:
    """Per-stage figures for one prompt (see the module docstring); {} stages skipped without embedder."""
    inputs = [PromptInput(text, num_prompt_tokens)]
    predictor.predict(inputs)  # warm-up: first runs allocate
    model = predictor.model
    one_hot = model.layout.one_hot([model.generator_for("")])
    embedder = predictor.embedder
    embedding = embedder.embed([text]) if embedder is not None else None
    stages: dict[str, dict[str, float]] = {}
    if embedder is not None:
        stages["tokenize"] = _timed(lambda: embedder.token_ids(text), num_calls)
        stages["embed"] = _timed(lambda: embedder.embed([text]), num_calls)
        stages["num_word_pieces"] = {"count": len(embedder.token_ids(text))}
    stages["lexical_features"] = _timed(lambda: features.extract_features(text, num_prompt_tokens), num_calls)
    stages["text_heads"] = _timed(lambda: model.text_heads.columns([text], embedding, one_hot), num_calls)
    matrix = predictor.input_matrix(inputs)
    stages["trees"] = _timed(lambda: model.predict_matrix(matrix), num_calls)
    stages["predict"] = _timed(lambda: predictor.predict(inputs), num_calls)
    return stages


def format_stages(stages: dict, round_trip: dict) -> list[str]:
    """Printable lines: each stage, and what the gRPC round trip adds to the in-process predict."""
    lines = []
    for name, figures in stages.items():
        if "count" in figures:
            lines.append(f"  {name:18s} {figures['count']}")
            continue
        lines.append(f"  {name:18s} p50 {figures['wall_p50_ms']:8.3f} ms   CPU {figures['cpu_ms']:8.3f} ms")
    predict = stages["predict"]
    lines.append(
        f"  {'gRPC + batcher':18s} p50 {round_trip['p50_ms'] - predict['wall_p50_ms']:8.3f} ms   "
        f"CPU {round_trip['process_cpu_ms_per_call'] - predict['cpu_ms']:8.3f} ms  (round trip minus predict)"
    )
    return lines
