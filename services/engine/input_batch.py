"""The persistent input batch: per-request rows kept across steps, step inputs built with array ops.

Each live request owns one row of a few host arrays, from its first scheduled step until it
finishes, is aborted or is preempted (its KV is gone: its next admission starts a fresh row):

    token_ids[row, :num_tokens[row]]     prompt + output ids (a sampled token is written at sampling)
    block_table[row, :num_blocks[row]]   its physical KV blocks (copied as the block manager grows them)
    temperature / top_p / top_k / seed   its sampling parameters

Per step only the new tokens and new blocks are copied into rows (a decode adds one token, and a
block every block_size steps). Positions, input ids, slot mapping, query starts and the step's block
tables are then computed with numpy over all rows at once, into one staging buffer (pinned when the
runner's device is CUDA) that reaches the device in a single non-blocking copy:

    request:    A A A A | B | C C          (A: prompt chunk, B: decode, C: prompt tail)
    positions:  0 1 2 3 | 9 | 4 5          start[r] + (token - query_start[r])
    slot:       block_table[row, pos // block_size] * block_size + pos % block_size

Invariant: a row holds a prefix of its request's tokens and of its block table. Both only grow while
the request keeps its KV, and losing the KV (preemption, counted by request.num_preemptions) gives a
fresh row; so a row that covers the positions a step reads is exact, and one that does not is
topped up from the request first. Rows are indices into the arrays; the step's batch order is a
gather by row. The owner removes a row when its request finishes, is aborted or is preempted.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Callable

import numpy as np
import torch

from services.engine.request import Request
from services.engine.scheduler.output import DecodeColumns, ScheduledChunk
from services.engine.steady_staging import SteadyStaging
from services.engine.step_arrays import StepArrays

_num_preemptions = attrgetter("num_preemptions")
_request_id = attrgetter("request_id")
INITIAL_ROWS = 16  # rows allocated first; capacities double as needed
INITIAL_TOKENS = 256  # token columns per row at first
INITIAL_BLOCKS = 16  # block-table columns per row at first
# Every per-row array (grown together).
ROW_ARRAYS = (
    "_num_tokens",
    "_num_blocks",
    "_epoch",
    "token_ids",
    "block_table",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "min_tokens",
)


class InputBatch:
    """Rows of the live requests and the step-input builder; engine thread only."""

    def __init__(self, block_size: int, device: torch.device) -> None:
        self.block_size = block_size
        self.device = device
        self._pin = device.type == "cuda" and torch.cuda.is_available()
        self._row_of: dict[str, int] = {}
        self._free_rows: list[int] = list(range(INITIAL_ROWS - 1, -1, -1))  # popped from the end: lowest first
        # Per row: tokens and blocks it holds, and request.num_preemptions when it was filled. Arrays: a
        # step checks every row at once (prepare), per-row reads happen only when a row changes.
        self._num_tokens = np.zeros(INITIAL_ROWS, dtype=np.int64)
        self._num_blocks = np.zeros(INITIAL_ROWS, dtype=np.int64)
        self._epoch = np.zeros(INITIAL_ROWS, dtype=np.int64)
        self.token_ids = np.zeros((INITIAL_ROWS, INITIAL_TOKENS), dtype=np.int32)
        self.block_table = np.zeros((INITIAL_ROWS, INITIAL_BLOCKS), dtype=np.int32)
        self.temperature = np.zeros(INITIAL_ROWS, dtype=np.float32)
        self.top_p = np.ones(INITIAL_ROWS, dtype=np.float32)
        self.top_k = np.zeros(INITIAL_ROWS, dtype=np.int64)
        self.seed = np.zeros(INITIAL_ROWS, dtype=np.int64)
        self.min_tokens = np.zeros(INITIAL_ROWS, dtype=np.int64)  # lets a step skip min_tokens.py's per-row check
        # The requests and rows of the last prepare(), reused while the same requests come in the same order
        # and no row was added or removed since (the steady decode step): see _rows_of.
        self._last_requests: list[Request] = []
        self._last_preemption_counts: list[int] = []
        self._last_status_changes = -1  # the decode columns' scheduler count at the last prepare (-1: unknown)
        self._last_rows: tuple[list[int], np.ndarray] = ([], np.zeros(0, dtype=np.int64))
        self._rows_changed = False
        self._steady = SteadyStaging(block_size, device, self._pin)  # decode-only steps' buffer, advanced in place

    # -- rows ----------------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        """Rows held by live requests."""
        return len(self._row_of)

    def row_of(self, request_id: str) -> int | None:
        return self._row_of.get(request_id)

    def remove(self, request_id: str) -> None:
        """Frees the request's row (finished, aborted or preempted); a no-op when it has none."""
        row = self._row_of.pop(request_id, None)
        if row is not None:
            self._rows_changed = True
            self._num_tokens[row] = self._num_blocks[row] = 0
            self._free_rows.append(row)

    def _add(self, request: Request) -> int:
        if not self._free_rows:
            self._grow_rows()
        row = self._free_rows.pop()
        self._row_of[request.request_id] = row
        self._rows_changed = True
        self._epoch[row] = request.num_preemptions
        self._num_tokens[row] = self._num_blocks[row] = 0
        option = request.sampling
        self.temperature[row], self.top_p[row] = option.temperature, option.top_p
        self.top_k[row], self.seed[row] = option.top_k, option.seed
        self.min_tokens[row] = option.min_tokens
        return row

    def _grow_rows(self) -> None:
        old = len(self._num_tokens)
        self._free_rows.extend(range(2 * old - 1, old - 1, -1))  # lowest free row is taken first
        for name in ROW_ARRAYS:
            array = getattr(self, name)
            grown = np.zeros((2 * old,) + array.shape[1:], dtype=array.dtype)
            grown[:old] = array
            setattr(self, name, grown)

    def _sync_row(self, row: int, request: Request, table: list[int]) -> None:
        """Copies the request's tokens and blocks the row lacks (only the new ones)."""
        num_tokens = len(request.prompt_token_ids) + len(request.output_token_ids)
        have = self._num_tokens.item(row)  # Python ints: numpy scalars are slow in slices and comparisons
        if num_tokens != have:
            if num_tokens > self.token_ids.shape[1]:
                self.token_ids = _widen(self.token_ids, num_tokens)
            if num_tokens < have:
                have = 0
            self.token_ids[row, have:num_tokens] = request.token_ids_slice(have, num_tokens)
            self._num_tokens[row] = num_tokens
        self._sync_blocks(row, table)

    def _sync_blocks(self, row: int, table: list[int]) -> None:
        """Copies the blocks the row lacks (only the new ones)."""
        num_blocks, have = len(table), self._num_blocks.item(row)
        if num_blocks != have:
            if num_blocks > self.block_table.shape[1]:
                self.block_table = _widen(self.block_table, num_blocks)
            if num_blocks < have:
                have = 0
            self.block_table[row, have:num_blocks] = table[have:]
            self._num_blocks[row] = num_blocks

    def write_drafts(self, row: int, draft_token_ids: list[int]) -> None:
        """Puts a verify's drafts right after the row's tokens, without counting them: the step reads
        them as inputs at positions num_tokens.., and the next append overwrites what was rejected."""
        start = self._num_tokens.item(row)
        stop = start + len(draft_token_ids)
        if stop > self.token_ids.shape[1]:
            self.token_ids = _widen(self.token_ids, stop)
        self.token_ids[row, start:stop] = draft_token_ids

    def write_drafts_at(self, row: int, index: int, token_id: int) -> None:
        """Puts draft number `index` (0-based) after the row's tokens (write_drafts, one at a time)."""
        position = self._num_tokens.item(row) + index
        if position >= self.token_ids.shape[1]:
            self.token_ids = _widen(self.token_ids, position + 1)
        self.token_ids[row, position] = token_id

    def append_tokens(self, row: int, token_ids: list[int]) -> None:
        """Appends a verify's output (accepted drafts + one token) to the row. The scheduler then keeps
        only the blocks of positions < num_tokens - 1, the KV that is the request's (Scheduler.
        apply_verified trims the blocks of rejected drafts), so the row forgets its later blocks too:
        the request may get other blocks at those logical indices later, and the row must sync them."""
        self.write_drafts(row, token_ids)
        num_tokens = self._num_tokens.item(row) + len(token_ids)
        self._num_tokens[row] = num_tokens
        kept = -(-(num_tokens - 1) // self.block_size)
        if self._num_blocks.item(row) > kept:
            self._num_blocks[row] = kept

    def record_sampled(
        self, arrays: StepArrays, token_ids: list[int] | np.ndarray, picked: np.ndarray | None = None
    ) -> None:
        """Writes each sampled token (sample_indices order; only the picked ones of them, a boolean mask,
        when given) after its request's tokens.

        A sampling chunk catches its request up, and prepare() synced the row to it, so the row holds
        exactly seq_len tokens: the token goes at position seq_len (a row never runs ahead). Verify
        chunks are not recorded here (append_tokens)."""
        if len(token_ids) == 0:
            return
        rows, positions = arrays.sample_rows, arrays.sample_seq_lens
        if picked is not None:
            rows, positions = rows[picked], positions[picked]
        if arrays.max_seq_len >= self.token_ids.shape[1]:  # max_seq_len >= every position: no max() per step
            self.token_ids = _widen(self.token_ids, arrays.max_seq_len + 1)
        self.token_ids[rows, positions] = token_ids
        self._num_tokens[rows] += 1  # rows are distinct within a step

    # -- one step ------------------------------------------------------------------------

    def prepare(
        self,
        chunks: list[ScheduledChunk],
        block_table_of: Callable[[str], list[int]],
        decodes: DecodeColumns | None = None,
    ) -> StepArrays:
        """Syncs the step's rows, then builds the step's arrays; block_table_of(request_id) -> its blocks
        (KvBlockManager.block_table). The step is `decodes` (one-token decodes as columns, none when None)
        followed by `chunks` (SchedulerOutput.decodes and .tail). A request without a row, or preempted
        since its row was filled, gets a fresh row. A row is synced only when it lacks tokens or blocks
        this step reads (tables only grow while a request holds its KV), so a decode step touches no
        table most of the time.

        The per-request work is a few list comprehensions over the chunks (one attribute each; the decode
        columns need none) and two map()s over the requests; which rows need a fresh row or a sync is
        decided for all rows at once with numpy, and only those rows are visited one by one."""
        if decodes is not None and not chunks:  # the steady decode step: last step's buffer advanced
            return self._prepare_decodes(decodes, block_table_of)
        self._steady.drop()
        requests = [chunk.request for chunk in chunks]
        seq_lens_list = [chunk.num_context_tokens for chunk in chunks]
        counts = [chunk.num_new_tokens for chunk in chunks]
        samples = [chunk.samples_token for chunk in chunks]
        num_decodes = len(decodes) if decodes is not None else 0
        if decodes is None:
            seq_lens = np.array(seq_lens_list, dtype=np.int64)
        else:
            seq_lens = np.concatenate((decodes.seq_lens, seq_lens_list)) if chunks else decodes.seq_lens
            requests, seq_lens_list = decodes.requests + requests, decodes.seq_lens_list + seq_lens_list
            counts, samples = [1] * num_decodes + counts, [True] * num_decodes + samples
        rows_list, rows = self._rows_of(requests)
        self._sync_stale(requests, rows_list, rows, seq_lens, block_table_of)
        if len(counts) != sum(counts):  # some chunk feeds more than one token: a prefill chunk or a verify
            for index in [i for i, chunk in enumerate(chunks, num_decodes) if chunk.num_draft_tokens]:
                drafts = requests[index].draft_token_ids
                num_drafts = chunks[index - num_decodes].num_draft_tokens
                self.write_drafts(rows_list[index], drafts[:num_drafts])  # type: ignore[index]
        sample_indices = list(range(len(samples))) if all(samples) else [i for i, s in enumerate(samples) if s]
        return self._build(rows, seq_lens, seq_lens_list, counts, sample_indices)

    def _prepare_decodes(self, decodes: DecodeColumns, block_table_of: Callable[[str], list[int]]) -> StepArrays:
        """prepare() of a step that is decode columns only: rows synced, then steady_staging.py's buffer."""
        rows_list, rows = self._rows_of(decodes.requests, decodes.num_status_changes)
        seq_lens, num_blocks = decodes.seq_lens, self._num_blocks[rows]
        opens_block = num_blocks * self.block_size < seq_lens  # a 1 / block_size share of the rows, each step
        if (self._num_tokens[rows] < seq_lens).any():
            self._sync_stale(decodes.requests, rows_list, rows, seq_lens, block_table_of)
        elif opens_block.any():
            self._add_opened_blocks(decodes.request_ids, rows, num_blocks, np.flatnonzero(opens_block), block_table_of)
        return self._steady.arrays(rows, decodes.seq_lens, decodes.seq_lens_list, self.token_ids, self.block_table)

    def _add_opened_blocks(
        self,
        request_ids: list[str],
        rows: np.ndarray,
        num_blocks: np.ndarray,
        indices: np.ndarray,
        block_table_of: Callable[[str], list[int]],
    ) -> None:
        """_sync_row for decodes whose rows lack exactly their table's last block (their position opened
        it): one array write for all of them; any other shortfall is synced row by row."""
        tables = [block_table_of(request_ids[index]) for index in indices.tolist()]
        lengths = np.fromiter(map(len, tables), np.int64, len(tables))
        have, short_rows = num_blocks[indices], rows[indices]
        if not (lengths == have + 1).all() or int(lengths.max()) > self.block_table.shape[1]:
            for row, table in zip(short_rows.tolist(), tables):
                self._sync_blocks(row, table)
            return
        self.block_table[short_rows, have] = [table[-1] for table in tables]
        self._num_blocks[short_rows] = lengths

    def _sync_stale(
        self,
        requests: list[Request],
        rows_list: list[int],
        rows: np.ndarray,
        seq_lens: np.ndarray,
        block_table_of: Callable[[str], list[int]],
    ) -> None:
        """Syncs the rows that lack tokens or blocks the step reads (all rows checked at once)."""
        stale = (self._num_tokens[rows] < seq_lens) | (self._num_blocks[rows] * self.block_size < seq_lens)
        for index in np.flatnonzero(stale).tolist():
            request = requests[index]
            self._sync_row(rows_list[index], request, block_table_of(request.request_id))

    def _rows_of(self, requests: list[Request], num_status_changes: int = -1) -> tuple[list[int], np.ndarray]:
        """Each request's row (a fresh one for a request without a row or preempted since its row was
        filled), as a list and an array. The same requests in the same order as the last call, none
        preempted since (the same preemption counts), with no row added or removed since, have the same
        rows: two list comparisons in C instead of a dict lookup per request. A known scheduler status-change
        count (decode columns) equal to the last call's says no request was preempted since, without reading
        every request's count."""
        if (
            num_status_changes >= 0
            and num_status_changes == self._last_status_changes
            and not self._rows_changed
            and requests == self._last_requests
        ):
            return self._last_rows
        self._last_status_changes = num_status_changes
        preemption_counts = list(map(_num_preemptions, requests))
        if (
            requests == self._last_requests  # identity comparisons (Request compares by identity)
            and preemption_counts == self._last_preemption_counts
            and not self._rows_changed
        ):
            return self._last_rows
        rows_list = list(map(self._row_of.get, map(_request_id, requests)))
        index = -1
        while None in rows_list:  # new requests (or rows dropped by preemption): found in C, one by one
            index = rows_list.index(None, index + 1)
            rows_list[index] = self._add(requests[index])
        rows = np.array(rows_list, dtype=np.int64)
        epochs = self._epoch[rows].tolist()
        if epochs != preemption_counts:  # some request was preempted since its row was filled: a fresh row
            for index in [i for i, (epoch, count) in enumerate(zip(epochs, preemption_counts)) if epoch != count]:
                self.remove(requests[index].request_id)
                rows[index] = rows_list[index] = self._add(requests[index])
        self._last_requests, self._last_preemption_counts = requests, preemption_counts
        self._last_rows, self._rows_changed = (rows_list, rows), False
        return rows_list, rows

    def _build(
        self,
        rows: np.ndarray,
        seq_lens: np.ndarray,
        seq_lens_list: list[int],
        counts_list: list[int],
        sample_indices: list[int],
    ) -> StepArrays:
        """Vectorised: positions, ids, slots and tables of every token, in one staging buffer laid out
        [ids | positions | slots | query starts | seq lens | block tables] (int32)."""
        num_reqs, num_tokens = len(rows), sum(counts_list)
        max_seq_len = int(seq_lens.max())
        width = -(-max_seq_len // self.block_size)
        bounds = (0, num_tokens, 2 * num_tokens, 3 * num_tokens, 3 * num_tokens + num_reqs + 1)
        bounds += (bounds[-1] + num_reqs, bounds[-1] + num_reqs + num_reqs * width)
        ids, pos, slots, query, lens, tables = (slice(a, b) for a, b in zip(bounds, bounds[1:], strict=False))
        staging = self._staging_buffer(tables.stop)
        host = staging.numpy()
        if num_tokens == num_reqs:  # every request feeds one token (decodes): no repeat needed
            token_rows, positions = rows, seq_lens - 1
            query_start_host = list(range(num_reqs + 1))
            host[query] = np.arange(num_reqs + 1)
        else:
            counts = np.array(counts_list, dtype=np.int64)
            query_start = np.zeros(num_reqs + 1, dtype=np.int64)
            np.cumsum(counts, out=query_start[1:])
            token_rows = np.repeat(rows, counts)
            positions = np.arange(num_tokens, dtype=np.int64) + np.repeat(seq_lens - counts - query_start[:-1], counts)
            query_start_host = query_start.tolist()
            host[query] = query_start
        host[ids] = self.token_ids[token_rows, positions]
        host[pos] = positions
        blocks = self.block_table[token_rows, positions // self.block_size]
        host[slots] = blocks * self.block_size + positions % self.block_size
        host[lens] = seq_lens
        host[tables] = self.block_table[rows, :width].reshape(-1)
        device = staging.to(self.device, non_blocking=True) if self.device.type != "cpu" else staging
        if len(sample_indices) == num_reqs:  # every request samples (decodes): no gather
            sample_rows, sample_seq_lens = rows, seq_lens
        else:
            picked = np.array(sample_indices, dtype=np.int64)
            sample_rows, sample_seq_lens = rows[picked], seq_lens[picked]
        return StepArrays(
            input_ids=device[ids],
            positions=device[pos],
            slot_mapping=device[slots].long(),
            query_start_loc=device[query],
            seq_lens=device[lens],
            block_tables=device[tables].view(num_reqs, width),
            query_start_loc_host=query_start_host,
            seq_lens_host=seq_lens_list,
            max_query_len=max(counts_list),
            max_seq_len=max_seq_len,
            rows=rows,
            sample_indices=sample_indices,
            sample_rows=sample_rows,
            sample_seq_lens=sample_seq_lens,
        )

    def _staging_buffer(self, num_elements: int) -> torch.Tensor:
        """A fresh int32 host buffer per step (the previous one may still be copying to the device);
        pinned on CUDA so the copy is asynchronous."""
        return torch.empty(num_elements, dtype=torch.int32, pin_memory=self._pin)


def _widen(array: np.ndarray, min_columns: int) -> np.ndarray:
    """The array with at least min_columns columns (capacity doubled), contents kept."""
    columns = array.shape[1]
    while columns < min_columns:
        columns *= 2
    grown = np.zeros((array.shape[0], columns), dtype=array.dtype)
    grown[:, : array.shape[1]] = array
    return grown
