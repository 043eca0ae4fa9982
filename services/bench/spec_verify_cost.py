"""What a verify adds to a decode step of the real model, with verifies batched vs one SDPA each (forced drafts).

`python -m services.bench.spec_verify_cost --out docs/benchmarks/spec/verify_cost.json`

B requests hold `--context-len` tokens in a paged cache (contents do not matter for time; no prefill); each
step feeds every request one token, and v of them k drafts more (a verify: k + 1 tokens), through FusedLlama
(all layers, the attention backend, final norm, LM head on every fed row, argmax): the engine's forward for
that step, without its host bookkeeping. Two attention paths on the same model and cache, alternated step by
step, timed on thread CPU time (1 torch thread):

    per-request  verifies leave the batched decodes for one fp32 SDPA each (the path before session 11)
    batched      verifies and short chunks batched (short_query_attention.py)

Per batch size and path, least squares over the grid: step_s = base + per_verify x v + per_draft x drafts, the
terms the draft-cost meter (spec/draft_cost.py) fits online from the engine's own steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import statistics
import time

import numpy as np
import torch

from services.bench.results import build_report, write_report
from services.common.model_catalog import DEFAULT_MODEL
from services.engine.attention import AttentionMetadata, make_metadata
from services.engine.fused_llama import FusedLlama
from services.engine.kernels.backend import ReferenceAttention
from services.engine.kv_cache import KvCacheShape, PagedKvCache
from services.engine.model_loader import load_model

BLOCK_SIZE = 16


class PerRequestVerifies(ReferenceAttention):
    """The reference backend with verifies attended one request at a time (no short-query plan)."""

    def prepare(self, metadata: AttentionMetadata) -> AttentionMetadata:
        return dataclasses.replace(super().prepare(metadata), short_queries=None)


@dataclasses.dataclass(frozen=True)
class VerifyCostFit:
    """One batch size and path: the fitted terms in ms, and the measured medians they came from."""

    batch_size: int
    path: str  # per-request | batched
    base_ms: float  # a plain step of this batch (no drafts)
    per_verify_ms: float  # each request that verifies, on top of its decode
    per_draft_ms: float  # each draft token
    median_step_ms: dict[str, float]  # "v=<verifies>,k=<drafts each>" -> median thread-CPU ms


class _Batch:
    """A model, its cache and the fixed block tables of num_requests requests of context_len tokens."""

    def __init__(self, model: torch.nn.Module, num_requests: int, context_len: int, max_drafts: int) -> None:
        config = model.config
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        blocks_each = -(-(context_len + max_drafts + 1) // BLOCK_SIZE)
        shape = KvCacheShape(config.num_hidden_layers, num_requests * blocks_each, BLOCK_SIZE, kv_heads, head_dim)
        self.cache = PagedKvCache(shape, next(model.parameters()).dtype, torch.device("cpu"))
        self.decoder = FusedLlama(model, heads, kv_heads, head_dim)
        order = torch.randperm(num_requests * blocks_each, generator=torch.Generator().manual_seed(0)).tolist()
        self.tables = [order[r * blocks_each : (r + 1) * blocks_each] for r in range(num_requests)]
        self.context_len, self.scale = context_len, head_dim**-0.5

    def step(self, drafts_per_request: list[int], attention: ReferenceAttention) -> None:
        """One forward: request r feeds 1 + drafts_per_request[r] tokens after its context."""
        starts, positions, slots, seq_lens = [0], [], [], []
        for table, num_drafts in zip(self.tables, drafts_per_request):
            fed = range(self.context_len, self.context_len + 1 + num_drafts)
            positions.extend(fed)
            slots.extend(table[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE for p in fed)
            starts.append(starts[-1] + len(fed))
            seq_lens.append(fed.stop)
        metadata = attention.prepare(make_metadata(torch.tensor(slots), starts, seq_lens, self.tables))
        token_ids = torch.ones(starts[-1], dtype=torch.long)
        hidden = self.decoder.forward(token_ids, torch.tensor(positions), metadata, attention, self.cache, self.scale)
        self.decoder.lm_head(hidden).argmax(dim=-1)


def _grid(batch_size: int, draft_counts: list[int]) -> list[tuple[int, int]]:
    """(verifies, drafts each): the plain step, then a quarter, half and all of the batch verifying each k."""
    counts = sorted({max(1, batch_size // 4), max(1, batch_size // 2), batch_size})
    return [(0, 0)] + [(v, k) for v in counts for k in draft_counts]


@torch.inference_mode()
def measure(batch: _Batch, batch_size: int, draft_counts: list[int], num_repeats: int) -> list[VerifyCostFit]:
    paths = {"per-request": PerRequestVerifies(), "batched": ReferenceAttention()}
    grid = _grid(batch_size, draft_counts)
    samples = {(path, cell): [] for path in paths for cell in grid}
    for repeat in range(num_repeats + 1):  # the first round warms up
        for cell in grid:
            for path, attention in paths.items():
                drafts = [cell[1] if r < cell[0] else 0 for r in range(batch_size)]
                started_s = time.thread_time()
                batch.step(drafts, attention)
                if repeat:
                    samples[path, cell].append(time.thread_time() - started_s)
    return [_fit(batch_size, path, grid, samples) for path in paths]


def _fit(batch_size: int, path: str, grid, samples) -> VerifyCostFit:
    design = np.array([[1.0, v, v * k] for v, k in grid for _ in samples[path, (v, k)]])
    seconds = np.array([s for cell in grid for s in samples[path, cell]])
    terms, *_ = np.linalg.lstsq(design, seconds, rcond=None)
    medians = {f"v={v},k={k}": 1e3 * statistics.median(samples[path, (v, k)]) for v, k in grid}
    return VerifyCostFit(batch_size, path, *(float(1e3 * t) for t in terms), medians)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch-sizes", default="16,4,1", help="comma-separated")
    parser.add_argument("--draft-counts", default="2,8", help="k per verifying request, comma-separated")
    parser.add_argument("--context-len", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("docs/benchmarks/spec/verify_cost.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_model(args.model, dtype=torch.bfloat16, device=torch.device("cpu"), seed=0).model
    draft_counts = [int(k) for k in args.draft_counts.split(",")]
    load_before, fits = os.getloadavg(), []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        batch = _Batch(model, batch_size, args.context_len, max(draft_counts))
        for fit in measure(batch, batch_size, draft_counts, args.repeats):
            fits.append(fit)
            print(
                f"batch {batch_size:2d} {fit.path:11s} base {fit.base_ms:6.1f} ms  per verify {fit.per_verify_ms:5.2f} ms"
                f"  per draft {fit.per_draft_ms:5.2f} ms"
            )
    config = {**vars(args), "out": str(args.out), "dtype": "bfloat16", "torch_threads": 1, "clock": "thread_time"}
    figures = {"load_average_before": load_before, "load_average_after": os.getloadavg(), "fits": fits}
    print("wrote", write_report(args.out, build_report("spec_verify_cost", config, figures)))


if __name__ == "__main__":
    main()
