"""Request traces from the shared workload data: ShareGPT and two Alpaca-like sets.

Every benchmark (simulator and serving) draws its work from here, so policies and versions are
compared on identical requests. Token counts are the dataset's Llama-2 counts (no BOS); the output
count is the real answer's length, used as max_tokens with ignore_eos (vLLM's method).

    name             prompts                              output lengths
    sharegpt         ShareGPT first-turn prompt text      the first ChatGPT reply
    alpaca           text_davinci_003 instructions        text_davinci_003's answers (the Alpaca writer)
    alpaca-lengths   lengths only, drawn from the above   Stanford Alpaca reference answers (L_gt)

Sampling is deterministic for a seed: without replacement while the (filtered) rows suffice, with
replacement beyond; a row drawn k > 0 times before gets the id suffix `-r{k}`, so ids stay unique.
The data is research-licensed and read at run time only (see ../shared/data/README.md).
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import pathlib
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

DATA_DIR_ENV = "ALISE_SHARED_DATA"  # overrides DEFAULT_DATA_DIR, read at call time
DEFAULT_DATA_DIR = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
SHAREGPT_FILE = pathlib.PurePosixPath("sharegpt/sharegpt_v3_first_turn.dev.jsonl.gz")
ALPACA_EVAL_FILE = pathlib.PurePosixPath("alpaca_eval/model_outputs_10_generators.dev.jsonl.gz")
ALPACA_LENGTHS_FILE = pathlib.PurePosixPath("alpaca_lengths/alpaca-train-10k-length.json.gz")
ALPACA_GENERATOR = "text_davinci_003"  # it wrote the Stanford Alpaca answers

SHAREGPT = "sharegpt"
ALPACA = "alpaca"
ALPACA_LENGTHS = "alpaca-lengths"
TRACE_NAMES = (SHAREGPT, ALPACA, ALPACA_LENGTHS)

# vLLM's benchmark filter for ShareGPT (benchmarks/benchmark_serving.py, sample_sharegpt_requests).
MIN_SHAREGPT_TOKENS = 4  # prompt and output each at least this many tokens
MAX_SHAREGPT_PROMPT_TOKENS = 1024  # prompt at most this many tokens


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace; lengths in the dataset's Llama-2 tokens (no BOS)."""

    request_id: str  # unique within the trace
    prompt_text: str | None  # the prompt; None for length-only traces (alpaca-lengths)
    num_prompt_tokens: int  # prompt length, >= 1
    num_output_tokens: int  # the real answer's length, >= 1: max_tokens with ignore_eos


def resolve_data_dir(data_dir: pathlib.Path | None = None) -> pathlib.Path:
    """data_dir if given, else $ALISE_SHARED_DATA if set, else DEFAULT_DATA_DIR (../shared/data)."""
    if data_dir is not None:
        return pathlib.Path(data_dir)
    from_env = os.environ.get(DATA_DIR_ENV)
    return pathlib.Path(from_env) if from_env else DEFAULT_DATA_DIR


def load_trace(
    name: str,
    *,
    num_requests: int,
    seed: int,
    data_dir: pathlib.Path | None = None,
    max_model_len: int = 2048,
) -> list[TraceRequest]:
    """`num_requests` requests of trace `name`, in arrival order, deterministic for `seed`.

    Raises ValueError for an unknown name or bad sizes, FileNotFoundError naming the missing file.
    Every returned request satisfies num_prompt_tokens + num_output_tokens <= max_model_len.
    """
    if name not in TRACE_NAMES:
        raise ValueError(f"unknown trace {name!r}; expected one of {list(TRACE_NAMES)}")
    if num_requests <= 0:
        raise ValueError(f"num_requests must be > 0, got {num_requests}")
    if max_model_len < 2:
        raise ValueError(f"max_model_len must be >= 2, got {max_model_len}")
    root = resolve_data_dir(data_dir)
    rng = np.random.default_rng(seed)
    if name == SHAREGPT:
        rows = _sharegpt_rows(root, max_model_len)
    elif name == ALPACA:
        rows = _alpaca_rows(root, max_model_len)
    else:
        rows = _alpaca_lengths_rows(root, max_model_len, rng)
    if not rows:
        raise ValueError(f"trace {name!r} has no request that fits max_model_len={max_model_len}")
    return _sample(rows, num_requests, rng)


def _sharegpt_rows(root: pathlib.Path, max_model_len: int) -> list[TraceRequest]:
    rows = []
    for record in _read_jsonl(_existing(root, SHAREGPT_FILE)):
        num_prompt, num_output = record["prompt_llama2_tokens"], record["response_llama2_tokens"]
        if num_prompt < MIN_SHAREGPT_TOKENS or num_output < MIN_SHAREGPT_TOKENS:
            continue
        if num_prompt > MAX_SHAREGPT_PROMPT_TOKENS or num_prompt + num_output > max_model_len:
            continue
        rows.append(TraceRequest(f"sharegpt-{record['id']}", record["prompt"], num_prompt, num_output))
    return rows


def _davinci_records(root: pathlib.Path) -> list[dict[str, Any]]:
    records = _read_jsonl(_existing(root, ALPACA_EVAL_FILE))
    return [record for record in records if record["generator"] == ALPACA_GENERATOR]


def _alpaca_rows(root: pathlib.Path, max_model_len: int) -> list[TraceRequest]:
    """text_davinci_003's answers; rows with an empty answer are dropped (nothing to generate)."""
    rows = []
    for record in _davinci_records(root):
        num_prompt, num_output = record["instruction_llama2_tokens"], record["output_llama2_tokens"]
        if num_prompt >= 1 and num_output >= 1 and num_prompt + num_output <= max_model_len:
            idx = record["instruction_idx"]
            rows.append(TraceRequest(f"alpaca-{idx}", record["instruction"], num_prompt, num_output))
    return rows


def _alpaca_lengths_rows(root: pathlib.Path, max_model_len: int, rng: np.random.Generator) -> list[TraceRequest]:
    """Alpaca reference lengths L_gt, each paired with a prompt length drawn from the davinci instructions.

    The length file has no prompts, and prompt length predicts little of output length in these
    sets, so an independent draw from the closest real instruction-length distribution is used.
    """
    records = _read_json(_existing(root, ALPACA_LENGTHS_FILE))
    prompt_lengths = np.array([r["instruction_llama2_tokens"] for r in _davinci_records(root)], dtype=np.int64)
    drawn = rng.choice(prompt_lengths[prompt_lengths >= 1], size=len(records), replace=True)
    rows = []
    for record, num_prompt in zip(records, drawn.tolist()):
        num_output = record["L_gt"]
        if num_output >= 1 and num_prompt + num_output <= max_model_len:
            rows.append(TraceRequest(f"alpaca-len-{record['id']}", None, num_prompt, num_output))
    return rows


def _sample(rows: Sequence[TraceRequest], num_requests: int, rng: np.random.Generator) -> list[TraceRequest]:
    """A random subset in random order; with replacement (ids suffixed -r1, -r2, ...) past len(rows)."""
    if num_requests <= len(rows):
        indices = rng.permutation(len(rows))[:num_requests]
    else:
        indices = rng.integers(0, len(rows), size=num_requests)
    times_drawn: dict[int, int] = {}
    sampled = []
    for index in indices.tolist():
        count = times_drawn.get(index, 0)
        times_drawn[index] = count + 1
        row = rows[index]
        sampled.append(row if count == 0 else replace(row, request_id=f"{row.request_id}-r{count}"))
    return sampled


def scale_trace(
    trace: Sequence[TraceRequest], *, divisor: float, max_prompt_tokens: int, max_output_tokens: int
) -> list[TraceRequest]:
    """Shrinks every length to ceil(length / divisor), clipped to [1, max_*_tokens].

    For runs on small hardware (the default CPU model: 2,048 context, ~100 tokens/s per stream):
    dividing keeps the shape of the length distribution and the order of requests by length
    (a longer request never becomes shorter than a shorter one; ties may appear), which is what a
    length-aware scheduler exploits; clipping bounds the few outliers. Prompt text is kept as is:
    the caller truncates or pads it to the scaled count.
    """
    if not divisor >= 1.0 or math.isinf(divisor):
        raise ValueError(f"divisor must be a finite number >= 1, got {divisor}")
    if max_prompt_tokens < 1 or max_output_tokens < 1:
        raise ValueError(
            f"max_prompt_tokens and max_output_tokens must be >= 1, got {max_prompt_tokens}, {max_output_tokens}"
        )

    def shrink(num_tokens: int, limit: int) -> int:
        return min(limit, max(1, math.ceil(num_tokens / divisor)))

    return [
        replace(
            request,
            num_prompt_tokens=shrink(request.num_prompt_tokens, max_prompt_tokens),
            num_output_tokens=shrink(request.num_output_tokens, max_output_tokens),
        )
        for request in trace
    ]


def _existing(root: pathlib.Path, relative: pathlib.PurePosixPath) -> pathlib.Path:
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"workload data file not found: {path} (set ${DATA_DIR_ENV} or pass data_dir; see ../shared/data/README.md)"
        )
    return path


@functools.lru_cache(maxsize=8)
def _read_jsonl_cached(path: pathlib.Path, mtime_ns: int) -> tuple[dict[str, Any], ...]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return tuple(json.loads(line) for line in lines if line.strip())


def _read_jsonl(path: pathlib.Path) -> tuple[dict[str, Any], ...]:
    """Rows of a .jsonl.gz file, cached per (path, mtime): callers must not mutate them."""
    return _read_jsonl_cached(path, path.stat().st_mtime_ns)


def _read_json(path: pathlib.Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as text:
        return json.load(text)
