"""One step's model inputs as the input batch hands them to the runner (input_batch.py, steady_staging.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class StepArrays:
    """One step's inputs: device tensors (views of one copied buffer) and their host twins."""

    input_ids: torch.Tensor  # int32 [num_tokens]
    positions: torch.Tensor  # int32 [num_tokens]
    slot_mapping: torch.Tensor  # int64 [num_tokens]
    query_start_loc: torch.Tensor  # int32 [num_reqs + 1]
    seq_lens: torch.Tensor  # int32 [num_reqs]
    block_tables: torch.Tensor  # int32 [num_reqs, max_blocks], rows padded with their first block
    query_start_loc_host: list[int]
    seq_lens_host: list[int]
    max_query_len: int
    max_seq_len: int
    rows: np.ndarray  # int64 [num_reqs]: the batch row of each request, in step order
    sample_indices: list[int]  # step request indices that sample a token, ascending
    sample_rows: np.ndarray  # int64: rows[sample_indices] (rows itself when every request samples)
    sample_seq_lens: np.ndarray  # int64: seq_lens[sample_indices], where each sampled token goes
