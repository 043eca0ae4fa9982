"""Random paged-attention cases and an independent float64 reference, for the kernel tests.

A case scatters each sequence's blocks over a shuffled pool. Memory the kernel must never read is
poisoned: unused blocks and the positions past a context in its last block hold NaN (fp16/bf16)
or carry NaN scales / garbage codes (int8), and block-table padding points at a NaN block. A kernel
that reads outside the context therefore returns NaN instead of a plausible number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from services.engine import kv_quant

NUM_SPARE_BLOCKS = 3  # never-referenced, poisoned blocks in every pool


@dataclass
class PagedCase:
    """One decode call's inputs, on one device."""

    query: torch.Tensor  # [num_seqs, num_heads, head_dim], fp16/bf16
    key_cache: torch.Tensor  # [num_blocks, block_size, kv_heads, head_dim], query dtype or int8
    value_cache: torch.Tensor
    key_scales: torch.Tensor | None  # [num_blocks, kv_heads] float32 (int8 only)
    value_scales: torch.Tensor | None
    block_tables: torch.Tensor  # int32 [num_seqs, max_blocks], padding -> a poisoned block
    context_lens: torch.Tensor  # int32 [num_seqs]
    context_lens_list: list[int]  # the same, on the host
    scale: float  # softmax scale


def _tables(context_lens: list[int], block_size: int, generator: torch.Generator) -> tuple[list[list[int]], int]:
    counts = [-(-max(c, 1) // block_size) for c in context_lens]
    num_blocks = sum(counts) + NUM_SPARE_BLOCKS
    order = torch.randperm(num_blocks, generator=generator).tolist()
    tables, first = [], 0
    for count in counts:
        tables.append(order[first : first + count])
        first += count
    return tables, num_blocks


def _poison_past_context(cache: torch.Tensor, tables, context_lens, value) -> None:
    block_size = cache.shape[1]
    for table, context_len in zip(tables, context_lens):
        used_in_last = context_len - (len(table) - 1) * block_size
        cache[table[-1], max(used_in_last, 0) :] = value


def make_case(
    context_lens: list[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    int8_kv: bool,
    device: torch.device | str,
    seed: int,
    query_scale: float = 1.0,
) -> PagedCase:
    """Fresh random inputs (seeded) with poisoned unused memory; see the module docstring."""
    generator = torch.Generator().manual_seed(seed)
    tables, num_blocks = _tables(context_lens, block_size, generator)
    used = sorted(b for table in tables for b in table)
    spare = sorted(set(range(num_blocks)) - set(used))
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    caches, scales = [], []
    for _ in range(2):  # keys, values
        data = torch.randn(shape, generator=generator)
        if int8_kv:
            quantized = kv_quant.quantize_int8_blocks(data)
            cache, block_scales = quantized.data, quantized.scales.clone()
            _poison_past_context(cache, tables, context_lens, 127)  # masked positions: extreme codes
            block_scales[spare] = float("nan")
        else:
            cache, block_scales = data.to(dtype), None
            cache[spare] = float("nan")
            _poison_past_context(cache, tables, context_lens, float("nan"))
        caches.append(cache.to(device))
        scales.append(None if block_scales is None else block_scales.to(device))
    width = max(len(t) for t in tables)
    padded = [t + [spare[0]] * (width - len(t)) for t in tables]
    query = (torch.randn(len(context_lens), num_heads, head_dim, generator=generator) * query_scale).to(dtype)
    return PagedCase(
        query=query.to(device),
        key_cache=caches[0],
        value_cache=caches[1],
        key_scales=scales[0],
        value_scales=scales[1],
        block_tables=torch.tensor(padded, dtype=torch.int32, device=device),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        context_lens_list=list(context_lens),
        scale=head_dim**-0.5,
    )


def _dequantized(cache: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    if scales is None:
        return cache.double()
    return cache.double() * scales.double()[:, None, :, None]


def reference_decode(case: PagedCase) -> torch.Tensor:
    """float64 [num_seqs, num_heads, head_dim]: softmax(q k^T * scale) v over each context, written
    out per sequence with explicit GQA head mapping (independent of the SDPA-based reference)."""
    keys_all = _dequantized(case.key_cache.cpu(), None if case.key_scales is None else case.key_scales.cpu())
    values_all = _dequantized(case.value_cache.cpu(), None if case.value_scales is None else case.value_scales.cpu())
    num_seqs, num_heads, head_dim = case.query.shape
    group = num_heads // case.key_cache.shape[2]
    block_size = case.key_cache.shape[1]
    output = torch.zeros(num_seqs, num_heads, head_dim, dtype=torch.float64)
    tables = case.block_tables.cpu().tolist()
    for s, context_len in enumerate(case.context_lens_list):
        if context_len == 0:
            continue
        blocks = tables[s][: -(-context_len // block_size)]
        keys = keys_all[blocks].reshape(-1, keys_all.shape[2], head_dim)[:context_len]
        values = values_all[blocks].reshape(-1, values_all.shape[2], head_dim)[:context_len]
        for h in range(num_heads):
            scores = keys[:, h // group] @ case.query[s, h].cpu().double() * case.scale
            output[s, h] = torch.softmax(scores, dim=0) @ values[:, h // group]
    return output


@dataclass
class VarlenCase:
    """One step's attention inputs: requests with any query lengths over a shared paged pool."""

    paged: PagedCase  # caches, scales, block tables, seq_lens (as context_lens); its query is unused
    query: torch.Tensor  # [num_tokens, num_heads, head_dim], each request's tokens in order
    query_start_loc: torch.Tensor  # int32 [num_requests + 1]
    query_lens: list[int]  # tokens per request this step
    seq_lens: list[int]  # positions with KV per request, this step's tokens included


def make_varlen_case(
    requests: list[tuple[int, int]],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    int8_kv: bool,
    device: torch.device | str,
    seed: int,
) -> VarlenCase:
    """requests: (query_len, seq_len) pairs, query_len <= seq_len; memory poisoned as make_case does."""
    query_lens, seq_lens = [q for q, _ in requests], [n for _, n in requests]
    paged = make_case(seq_lens, num_heads, num_kv_heads, head_dim, block_size, dtype, int8_kv, device, seed)
    generator = torch.Generator().manual_seed(seed + 1000)
    query = torch.randn(sum(query_lens), num_heads, head_dim, generator=generator).to(dtype).to(device)
    starts = [0]
    for length in query_lens:
        starts.append(starts[-1] + length)
    return VarlenCase(paged, query, torch.tensor(starts, dtype=torch.int32, device=device), query_lens, seq_lens)


def reference_varlen(case: VarlenCase) -> torch.Tensor:
    """float64 [num_tokens, num_heads, head_dim]: token i of a q-token query at position seq_len - q + i
    attends to positions <= its own; explicit GQA mapping (query head h reads kv head h // group)."""
    paged = case.paged
    keys_all = _dequantized(paged.key_cache.cpu(), None if paged.key_scales is None else paged.key_scales.cpu())
    values_all = _dequantized(paged.value_cache.cpu(), None if paged.value_scales is None else paged.value_scales.cpu())
    num_heads, head_dim = case.query.shape[1:]
    num_kv_heads, block_size = keys_all.shape[2], keys_all.shape[1]
    group = num_heads // num_kv_heads
    output = torch.zeros(case.query.shape, dtype=torch.float64)
    tables, start = paged.block_tables.cpu().tolist(), 0
    for r, (query_len, seq_len) in enumerate(zip(case.query_lens, case.seq_lens)):
        blocks = tables[r][: -(-seq_len // block_size)]
        keys = keys_all[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].repeat_interleave(group, 1)
        values = values_all[blocks].reshape(-1, num_kv_heads, head_dim)[:seq_len].repeat_interleave(group, 1)
        query = case.query[start : start + query_len].cpu().double()  # [q, heads, d]
        scores = torch.einsum("qhd,khd->hqk", query, keys) * paged.scale
        positions = torch.arange(seq_len - query_len, seq_len)
        scores = scores.masked_fill(torch.arange(seq_len)[None, None, :] > positions[None, :, None], float("-inf"))
        output[start : start + query_len] = torch.einsum("hqk,khd->qhd", torch.softmax(scores, dim=-1), values)
        start += query_len
    return output


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Frobenius relative error; NaN anywhere in actual gives inf (a poisoned read)."""
    actual64 = actual.detach().cpu().double()
    if not torch.isfinite(actual64).all():
        return float("inf")
    return kv_quant.relative_error(actual64, expected)


def run_steps_comparing_backends(core, candidate, reference, threshold: float) -> set[tuple[bool, ...]]:
    """Steps the engine to completion; every step's hidden states through `candidate` must be within
    `threshold` relative error of `reference` on the same cache state (rewriting the same keys to the
    same slots is idempotent). Returns the kinds of steps seen: sorted {is single-token} per chunk."""
    runner = core.runner
    kinds = set()
    with torch.inference_mode():
        while core.scheduler.has_work:
            step = core.scheduler.schedule()
            kinds.add(tuple(sorted({chunk.num_new_tokens == 1 for chunk in step.chunks})))
            hidden = []
            for backend in (reference, candidate):
                runner.attention = backend
                input_ids, positions, metadata = runner._prepare(step)
                hidden.append(runner._forward(input_ids, positions, metadata))
            error = kv_quant.relative_error(hidden[1].float(), hidden[0].float())
            assert error <= threshold, f"step {sorted(kinds)}: relative error {error:.3e}"
            core.scheduler.update(step, runner.execute(step))  # runs through the candidate
    return kinds
