"""The sweep of `alise bench attention`: every shape timed for the kernel and the SDPA baselines.

Shapes run one at a time with fresh random inputs (the largest, MHA x 256 x 8192, holds 34 GB of
bf16 KV); a baseline that would not fit in the free GPU memory is skipped and marked so.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from services.bench import attention_measure
from services.bench.attention_measure import DecodeShape, Timer
from services.engine.kernels import ops

GATHER_MEMORY_FACTOR = 1.6  # peak extra memory of gather + SDPA, in dense-KV sizes
ERROR_CHECK_SEQS = 4  # sequences compared with float32 SDPA per point


def shapes(config) -> list[DecodeShape]:
    """Every point of the sweep, bf16 before int8 so int8 rows can cite the bf16 baselines."""
    from services.bench.attention import LAYOUT_KV_HEADS

    result = []
    for layout in config.layouts:
        num_kv_heads = LAYOUT_KV_HEADS[layout] or config.num_heads
        for kv_dtype in config.kv_dtypes:
            for batch in config.batches:
                for context_len in config.context_lens:
                    result.append(
                        DecodeShape(
                            batch,
                            context_len,
                            config.num_heads,
                            num_kv_heads,
                            config.head_dim,
                            config.block_size,
                            int8_kv=kv_dtype == "int8",
                        )
                    )
    return result


def run_sweep(config) -> dict[str, Any]:
    device = torch.device("cuda")
    timer = Timer(device, config.num_warmup, config.num_iters)
    copy_bytes_per_s = attention_measure.copy_bandwidth_bytes_per_s(device, timer)
    print(f"{torch.cuda.get_device_name(device)}: device-to-device copy {copy_bytes_per_s / 1e9:.0f} GB/s", flush=True)
    rows = []
    for index, shape in enumerate(shapes(config)):
        try:
            rows.append(measure_shape(shape, timer, device, config.seed + index, config.baselines, copy_bytes_per_s))
        except torch.cuda.OutOfMemoryError:
            rows.append({**_shape_fields(shape), "skipped": "out of GPU memory"})
        torch.cuda.empty_cache()
        print(f"  {_progress_line(rows[-1])}", file=sys.stderr, flush=True)
    _cite_bf16_baselines(rows)
    return {"copy_bandwidth_gb_per_s": copy_bytes_per_s / 1e9, "rows": rows}


def _shape_fields(shape: DecodeShape) -> dict[str, Any]:
    layout = "mha" if shape.num_kv_heads == shape.num_heads else f"gqa{shape.num_kv_heads}"
    return {
        "layout": layout,
        "kv_dtype": "int8" if shape.int8_kv else "bf16",
        "batch": shape.batch,
        "context_len": shape.context_len,
        "num_heads": shape.num_heads,
        "num_kv_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim,
        "block_size": shape.block_size,
    }


def measure_shape(
    shape: DecodeShape, timer: Timer, device, seed: int, baselines: bool, copy_bytes_per_s: float
) -> dict:
    """Kernel time and bandwidth share; SDPA dense and SDPA + gather times for bf16 shapes."""
    inputs = attention_measure.make_inputs(shape, device, seed)
    kernel_s = timer.median_s(attention_measure.kernel_call(inputs, shape))
    plan = ops.plan_splits(shape.batch, shape.num_heads, shape.num_kv_heads, shape.context_len, _num_sms(device))
    achieved = shape.minimum_bytes() / kernel_s
    row = {
        **_shape_fields(shape),
        "minimum_bytes": shape.minimum_bytes(),
        "num_splits": plan.num_splits,
        "kernel_us": kernel_s * 1e6,
        "achieved_gb_per_s": achieved / 1e9,
        "share_of_copy_bandwidth": achieved / copy_bytes_per_s,
        "relative_error_vs_sdpa_fp32": attention_measure.relative_error_vs_sdpa(inputs, shape, ERROR_CHECK_SEQS),
    }
    if baselines and not shape.int8_kv:
        row.update(_baselines(inputs, shape, timer))
    return row


def _num_sms(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _baselines(inputs, shape: DecodeShape, timer: Timer) -> dict[str, Any]:
    free_bytes, _ = torch.cuda.mem_get_info()
    if GATHER_MEMORY_FACTOR * shape.dense_kv_bytes() > free_bytes:
        return {"baseline_skipped": f"needs {GATHER_MEMORY_FACTOR * shape.dense_kv_bytes() / 1e9:.0f} GB free"}
    try:  # SDPA's math fallback expands GQA heads: it may still run out of memory
        keys, values = attention_measure.gather_dense(inputs, shape)
        dense_s = timer.median_s(lambda: attention_measure.sdpa(inputs.query, keys, values, shape))
        keys = values = None  # frees the dense copies before the gather timing
        gather_s = timer.median_s(
            lambda: attention_measure.sdpa(inputs.query, *attention_measure.gather_dense(inputs, shape), shape)
        )
    except torch.cuda.OutOfMemoryError:
        return {"baseline_skipped": "SDPA ran out of GPU memory"}
    return {"sdpa_dense_us": dense_s * 1e6, "sdpa_gather_us": gather_s * 1e6}


def _cite_bf16_baselines(rows: list[dict]) -> None:
    """Speedups over SDPA + gather; int8 rows against the bf16 baseline of the same shape."""
    key = lambda row: (row["layout"], row["batch"], row["context_len"])  # noqa: E731
    gather = {key(row): row["sdpa_gather_us"] for row in rows if "sdpa_gather_us" in row}
    for row in rows:
        if "kernel_us" in row and key(row) in gather:
            row["speedup_vs_sdpa_gather"] = gather[key(row)] / row["kernel_us"]


def _progress_line(row: dict) -> str:
    head = f"{row['layout']:>5} {row['kv_dtype']:>4} batch {row['batch']:>3} ctx {row['context_len']:>5}"
    if "kernel_us" not in row:
        return f"{head}  {row.get('skipped', '')}"
    return f"{head}  {row['kernel_us']:9.1f} us  {100 * row['share_of_copy_bandwidth']:5.1f}% of copy bandwidth"
