"""Mixed steps for `alise bench attention`: one varlen launch against the per-request path it replaced.

A step of the engine mixes decodes with prefill chunks (causal over their cached prefix) and
speculative verify queries. For each scenario below, at the sweep's head shapes:

    varlen      ops.paged_attention: every query row of the step in one launch (the engine's path)
    per-request the previous CUDA backend: the decode kernel for the 1-token rows, then one SDPA per
                other request over its KV gathered from the pool (attention.attend_request)

Times are medians with a cold L2 (attention_measure.Timer); the outputs of the two paths are
compared (relative error) so a fast wrong kernel cannot pass unnoticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from services.engine.attention import attend_request
from services.engine.kernels import ops

SCENARIOS = {  # name: [(number of requests, query tokens each, context after the step)]
    "255 decodes @2k + 2k chunk over 2k prefix": [(255, 1, 2048), (1, 2048, 4096)],
    "64 decodes @4k + 4 chunks of 512 @1k": [(64, 1, 4096), (4, 512, 1024)],
    "64 verify (k=4) @2k": [(64, 5, 2048)],
}


@dataclass
class MixedInputs:
    """One step's query rows and paged pool (random contents)."""

    query: torch.Tensor  # [num_tokens, num_heads, head_dim] bf16
    key_cache: torch.Tensor  # [num_blocks, block_size, kv_heads, head_dim] bf16 or int8
    value_cache: torch.Tensor
    key_scales: torch.Tensor | None  # [num_blocks, kv_heads] float32 (int8)
    value_scales: torch.Tensor | None
    block_tables: torch.Tensor  # int32 [num_reqs, max_blocks]
    seq_lens: torch.Tensor  # int32 [num_reqs]
    query_start_loc: torch.Tensor  # int32 [num_reqs + 1]
    query_lens: list[int]  # host copies
    seq_lens_host: list[int]


def make_inputs(
    requests: list[tuple[int, int, int]],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    int8_kv: bool,
    device: torch.device,
    seed: int,
) -> MixedInputs:
    generator = torch.Generator(device=device).manual_seed(seed)
    query_lens = [q for count, q, _ in requests for _ in range(count)]
    seq_lens = [n for count, _, n in requests for _ in range(count)]
    blocks_per_req = [-(-n // block_size) for n in seq_lens]
    num_blocks, width = sum(blocks_per_req), max(blocks_per_req)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)

    def cache() -> torch.Tensor:
        if int8_kv:
            return torch.randint(-127, 128, shape, dtype=torch.int8, device=device, generator=generator)
        return torch.randn(shape, dtype=torch.bfloat16, device=device, generator=generator)

    def scales() -> torch.Tensor | None:
        return (
            torch.rand((num_blocks, num_kv_heads), device=device, generator=generator) / 40 + 1e-3 if int8_kv else None
        )

    permutation = torch.randperm(num_blocks, device=device, generator=generator).to(torch.int32)
    tables = torch.zeros((len(seq_lens), width), dtype=torch.int32, device=device)
    first = 0
    for row, count in enumerate(blocks_per_req):
        tables[row, :count] = permutation[first : first + count]
        first += count
    starts = [0]
    for length in query_lens:
        starts.append(starts[-1] + length)
    query = torch.randn((starts[-1], num_heads, head_dim), dtype=torch.bfloat16, device=device, generator=generator)
    return MixedInputs(
        query,
        cache(),
        cache(),
        scales(),
        scales(),
        tables,
        torch.tensor(seq_lens, dtype=torch.int32, device=device),
        torch.tensor(starts, dtype=torch.int32, device=device),
        query_lens,
        seq_lens,
    )


def varlen_call(inputs: MixedInputs, num_sms: int | None = None) -> Callable[[], torch.Tensor]:
    """The engine's path: plan once (as prepare does per step), then one launch."""
    starts = inputs.query_start_loc.tolist()
    plan = ops.plan_attention(
        starts,
        max(inputs.query_lens),
        max(inputs.seq_lens_host),
        inputs.query.shape[1],
        inputs.key_cache.shape[2],
        inputs.query.device,
        num_sms=num_sms,
    )
    query_start_loc = None if plan.work_items is None else inputs.query_start_loc
    out = torch.empty_like(inputs.query)
    scale = inputs.query.shape[2] ** -0.5
    return lambda: ops.paged_attention(
        inputs.query,
        inputs.key_cache,
        inputs.value_cache,
        inputs.block_tables,
        inputs.seq_lens,
        query_start_loc,
        plan,
        scale=scale,
        key_scales=inputs.key_scales,
        value_scales=inputs.value_scales,
        out=out,
    )


def per_request_call(inputs: MixedInputs) -> Callable[[], torch.Tensor]:
    """The replaced path: decode kernel on the 1-token rows, SDPA per other request (bf16 KV only)."""
    starts = inputs.query_start_loc.tolist()
    decodes = [r for r, q in enumerate(inputs.query_lens) if q == 1]
    others = [r for r, q in enumerate(inputs.query_lens) if q > 1]
    device = inputs.query.device
    rows = torch.tensor([starts[r] for r in decodes], dtype=torch.long, device=device)
    index = torch.tensor(decodes, dtype=torch.long, device=device)
    decode_tables, decode_lens = inputs.block_tables[index], inputs.seq_lens[index]
    max_decode = max((inputs.seq_lens_host[r] for r in decodes), default=1)
    block_size, scale = inputs.key_cache.shape[1], inputs.query.shape[2] ** -0.5

    def call() -> torch.Tensor:
        out = torch.empty_like(inputs.query)
        if decodes:
            out[rows] = ops.paged_decode_attention(
                inputs.query[rows],
                inputs.key_cache,
                inputs.value_cache,
                decode_tables,
                decode_lens,
                scale=scale,
                max_context_len=max_decode,
            )
        for r in others:
            table = inputs.block_tables[r, : -(-inputs.seq_lens_host[r] // block_size)].long()
            out[starts[r] : starts[r + 1]] = attend_request(
                inputs.query[starts[r] : starts[r + 1]],
                inputs.key_cache,
                inputs.value_cache,
                table,
                inputs.seq_lens_host[r],
                scale,
            )
        return out

    return call


def measure_scenario(name: str, inputs: MixedInputs, timer, num_sms: int | None = None) -> dict[str, Any]:
    """Times (and checks) one scenario; the per-request baseline runs for bf16 KV only."""
    varlen = varlen_call(inputs, num_sms)
    row: dict[str, Any] = {
        "scenario": name,
        "kv_dtype": "int8" if inputs.key_scales is not None else "bf16",
        "num_tokens": inputs.query.shape[0],
        "num_requests": len(inputs.query_lens),
        "varlen_us": timer.median_s(varlen) * 1e6,
    }
    if inputs.key_scales is None:
        baseline = per_request_call(inputs)
        row["per_request_us"] = timer.median_s(baseline) * 1e6
        row["speedup_vs_per_request"] = row["per_request_us"] / row["varlen_us"]
        expected = baseline().float()
        row["relative_error_vs_per_request"] = float((varlen().float() - expected).norm() / expected.norm())
    return row


def run_mixed(config, timer) -> list[dict[str, Any]]:
    """Every scenario at the sweep's head shape (GQA-8 layout), bf16 and int8 KV."""
    device = torch.device("cuda")
    rows = []
    for index, (name, requests) in enumerate(SCENARIOS.items()):
        for kv_dtype in config.kv_dtypes:
            inputs = make_inputs(
                requests,
                config.num_heads,
                8,
                config.head_dim,
                config.block_size,
                kv_dtype == "int8",
                device,
                config.seed + index,
            )
            try:
                rows.append(measure_scenario(name, inputs, timer))
            except torch.cuda.OutOfMemoryError:
                rows.append({"scenario": name, "kv_dtype": kv_dtype, "skipped": "out of GPU memory"})
            del inputs
            torch.cuda.empty_cache()
    return rows


def format_mixed(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'mixed step':<44} {'kv':>4} {'tokens':>6} {'varlen us':>10} {'per-req us':>10} {'x':>6} {'rel err':>8}"]
    for row in rows:
        if "varlen_us" not in row:
            lines.append(f"{row['scenario']:<44} {row['kv_dtype']:>4}  skipped: {row.get('skipped')}")
            continue
        baseline = row.get("per_request_us")
        lines.append(
            f"{row['scenario']:<44} {row['kv_dtype']:>4} {row['num_tokens']:>6} {row['varlen_us']:>10.1f} "
            + (
                f"{baseline:>10.1f} {row['speedup_vs_per_request']:>6.2f} {row['relative_error_vs_per_request']:>8.1e}"
                if baseline
                else f"{'-':>10} {'-':>6} {'-':>8}"
            )
        )
    return "\n".join(lines)
