"""The step inputs of steady decode steps, advanced in place instead of rebuilt (input_batch.py's fast path).

A steady decode step (the step is DecodeColumns and nothing else: every request feeds one token and
samples) that follows one over the same rows differs from it in known ways only:

    ids      token_ids[row, pos]          gathered: the rows hold the tokens sampled last step
    pos      last pos + 1                 written from the context lengths: seq_len - 1
    slots    last slot + 1                except where pos starts a block: block_table[row, pos // bs] * bs
    lens     last lens + 1
    tables   unchanged                    except the new block's entry where pos starts a block
    query    unchanged (0, 1, .., n)

So the buffer of the last such step is rewritten in place, [ids | pos | slots | query | lens | tables]
(int32, pinned on CUDA), and reaches the device by one copy into the same device buffer, whose views
(the StepArrays tensors) stay the same objects; the int64 slot mapping is refreshed by one cast into its
own buffer. Ten-odd numpy calls over the rows, no Python per request, no new tensor.

Invariant: a layout is advanced only for the same rows array (InputBatch._rows_of's cached one, by
identity: no row added, removed or re-assigned since), context lengths exactly one more than the last
step's, and the same table width (the longest context stays within its blocks); the input batch drops
the layout on every other prepare, so a step in between (a prefill, a verify, a drafter's pass) forces a
fresh build. A steady step's arrays are therefore valid until the next steady step is prepared; on CUDA
the rewrite first waits for the last copy out of the pinned buffer (an event; the step's sampling has
synchronized long before, so it never waits in practice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from services.engine.step_arrays import StepArrays


@dataclass
class _Layout:
    """One decode-only step's buffers and the host views of each part."""

    rows: np.ndarray  # int64 [n]: the input batch's rows array (identity-compared)
    seq_lens: np.ndarray  # int64 [n]: the last step's context lengths
    max_seq_len: int
    width: int  # block-table columns
    ids: np.ndarray  # int32 host views of the staging buffer
    pos: np.ndarray
    slots: np.ndarray
    lens: np.ndarray
    tables: np.ndarray  # [n, width]
    staging: torch.Tensor  # int32 host (pinned on CUDA)
    device: torch.Tensor  # the staging buffer's device copy (staging itself on CPU)
    slot_mapping: torch.Tensor  # int64 [n] on the device
    views: tuple[torch.Tensor, ...]  # input ids, positions, slots (int32), query starts, lens, tables
    query_start_host: list[int]
    sample_indices: list[int]
    copied: torch.cuda.Event | None  # recorded after the last host-to-device copy (CUDA only)


class SteadyStaging:
    """The last steady decode step's layout; engine thread only."""

    def __init__(self, block_size: int, device: torch.device, pin: bool) -> None:
        self.block_size = block_size
        self.device = device
        self._pin = pin
        self._layout: _Layout | None = None

    def drop(self) -> None:
        """Forgets the layout: the next decode-only step builds afresh (any other prepare calls this)."""
        self._layout = None

    def arrays(
        self, rows: np.ndarray, seq_lens: np.ndarray, seq_lens_list: list[int], token_ids: np.ndarray, table: np.ndarray
    ) -> StepArrays:
        """The step's arrays for decodes at these rows and context lengths (rows synced to them):
        the last layout advanced when it is this step's predecessor, else a new layout."""
        layout = self._layout
        if (
            layout is not None
            and layout.rows is rows
            and -(-(layout.max_seq_len + 1) // self.block_size) == layout.width
            and len(seq_lens) == len(layout.seq_lens)
            and ((seq_lens - layout.seq_lens) == 1).all()
        ):
            self._advance(layout, seq_lens, token_ids, table)
        else:
            layout = self._layout = self._build(rows, seq_lens, token_ids, table)
        return self._step_arrays(layout, seq_lens_list)

    def _build(self, rows: np.ndarray, seq_lens: np.ndarray, token_ids: np.ndarray, table: np.ndarray) -> _Layout:
        """A new layout filled from the rows (what InputBatch._build computes for a decode-only step)."""
        num_reqs, block_size = len(rows), self.block_size
        max_seq_len = int(seq_lens.max())
        width = -(-max_seq_len // block_size)
        staging = torch.empty(num_reqs * (5 + width) + 1, dtype=torch.int32, pin_memory=self._pin)
        host = staging.numpy()
        bounds = np.cumsum([0, num_reqs, num_reqs, num_reqs, num_reqs + 1, num_reqs, num_reqs * width]).tolist()
        ids, pos, slots, query, lens, tables = (host[a:b] for a, b in zip(bounds, bounds[1:]))
        positions = seq_lens - 1
        pos[:] = positions
        ids[:] = token_ids[rows, positions]
        slots[:] = table[rows, positions // block_size] * block_size + positions % block_size
        query[:] = np.arange(num_reqs + 1)
        lens[:] = seq_lens
        tables = tables.reshape(num_reqs, width)
        tables[:] = table[rows, :width]
        device = staging if self.device.type == "cpu" else staging.to(self.device, non_blocking=True)
        views = tuple(device[a:b] for a, b in zip(bounds, bounds[1:]))
        views = views[:5] + (views[5].view(num_reqs, width),)
        slot_mapping = views[2].long()
        copied = self._record_copy()
        return _Layout(
            rows, seq_lens, max_seq_len, width, ids, pos, slots, lens, tables, staging, device, slot_mapping, views,
            list(range(num_reqs + 1)), list(range(num_reqs)), copied,
        )  # fmt: skip

    def _advance(self, layout: _Layout, seq_lens: np.ndarray, token_ids: np.ndarray, table: np.ndarray) -> None:
        """Rewrites the layout for the next position of every request (module docstring)."""
        if layout.copied is not None:
            layout.copied.synchronize()  # the pinned buffer is free again (done long since)
        block_size, rows, pos = self.block_size, layout.rows, layout.pos
        np.subtract(seq_lens, 1, out=pos, casting="unsafe")
        layout.lens[:] = seq_lens
        layout.ids[:] = token_ids[rows, pos]
        layout.slots += 1
        starts = np.flatnonzero(pos % block_size == 0)  # positions that open a block
        if len(starts):
            columns = pos[starts] // block_size
            blocks = table[rows[starts], columns]
            layout.slots[starts] = blocks * block_size
            layout.tables[starts, columns] = blocks
        if layout.device is not layout.staging:
            layout.device.copy_(layout.staging, non_blocking=True)
            layout.copied = self._record_copy()
        layout.slot_mapping.copy_(layout.views[2])
        layout.seq_lens, layout.max_seq_len = seq_lens, layout.max_seq_len + 1

    def _record_copy(self) -> torch.cuda.Event | None:
        if self.device.type != "cuda":
            return None
        event = torch.cuda.Event()
        event.record()
        return event

    @staticmethod
    def _step_arrays(layout: _Layout, seq_lens_list: list[int]) -> StepArrays:
        input_ids, positions, _, query_start_loc, lens, block_tables = layout.views
        return StepArrays(
            input_ids=input_ids,
            positions=positions,
            slot_mapping=layout.slot_mapping,
            query_start_loc=query_start_loc,
            seq_lens=lens,
            block_tables=block_tables,
            query_start_loc_host=layout.query_start_host,
            seq_lens_host=seq_lens_list,
            max_query_len=1,
            max_seq_len=layout.max_seq_len,
            rows=layout.rows,
            sample_indices=layout.sample_indices,
            sample_rows=layout.rows,
            sample_seq_lens=layout.seq_lens,
        )
