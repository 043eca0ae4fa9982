"""The persistent input batch builds exactly the step inputs a plain per-token loop would, and never leaks rows.

A real scheduler over a small KV pool drives it: prompts arrive at different steps, long prompts are
chunked, the pool runs short (recompute preemptions), requests finish and some are aborted. Every
step's arrays are checked against a reference computed token by token from the requests themselves.
"""

import random

import numpy as np
import torch

from services.engine.input_batch import InputBatch
from services.engine.request import Request, RequestStatus, SamplingOptions
from services.engine.scheduler.output import ScheduledChunk, SchedulerOutput
from tests.engine_factories import EOS, make_scheduler

CPU = torch.device("cpu")


def _request(request_id: str, prompt: list[int], max_tokens: int, seed: int = 0, temperature: float = 0.0) -> Request:
    options = SamplingOptions(
        max_tokens=max_tokens, temperature=temperature, top_p=0.9, top_k=5, seed=seed, ignore_eos=True
    )
    return Request(request_id, prompt, options, 0.0, float(max_tokens))


def _reference(output: SchedulerOutput, block_table_of, block_size: int) -> dict[str, list]:
    """The step's inputs token by token (the old _prepare's loop)."""
    ids, positions, slots, starts, seq_lens, tables = [], [], [], [0], [], []
    for chunk in output.chunks:
        request = chunk.request
        first, last = request.num_computed_tokens, request.num_computed_tokens + chunk.num_new_tokens
        table = block_table_of(request.request_id)
        ids.extend(request.token_ids_slice(first, last))
        positions.extend(range(first, last))
        slots.extend(table[p // block_size] * block_size + p % block_size for p in range(first, last))
        starts.append(starts[-1] + chunk.num_new_tokens)
        seq_lens.append(last)
        tables.append(table[: -(-last // block_size)])
    return dict(ids=ids, positions=positions, slots=slots, starts=starts, seq_lens=seq_lens, tables=tables)


def _check(arrays, expected) -> None:
    assert arrays.input_ids.tolist() == expected["ids"]
    assert arrays.positions.tolist() == expected["positions"]
    assert arrays.slot_mapping.dtype == torch.long and arrays.slot_mapping.tolist() == expected["slots"]
    assert arrays.query_start_loc.tolist() == arrays.query_start_loc_host == expected["starts"]
    assert arrays.seq_lens.tolist() == arrays.seq_lens_host == expected["seq_lens"]
    assert arrays.max_seq_len == max(expected["seq_lens"])
    assert arrays.block_tables.dtype == torch.int32
    for row, table in zip(arrays.block_tables.tolist(), expected["tables"], strict=True):
        assert row[: len(table)] == table


def _sample_and_update(scheduler, batch: InputBatch, output: SchedulerOutput, arrays, rng, max_token: int) -> None:
    """Random tokens for the step's sampled rows, recorded in the batch and applied by the scheduler; rows of
    requests that finished are removed (as the runner and the engine core do)."""
    tokens = [rng.randrange(3, max_token) for _ in arrays.sample_indices]
    batch.record_sampled(arrays, tokens)
    requests = [output.chunks[i].request for i in arrays.sample_indices]
    sampled = {r.request_id: t for r, t in zip(requests, tokens, strict=True)}
    for result in scheduler.update(output, sampled):
        if result.finish_reason is not None:
            batch.remove(result.request_id)


def _drive(scheduler, batch: InputBatch, arrivals: dict[int, list[Request]], abort_at: dict[int, str], rng):
    """Steps to completion, checking every step; returns the number of preemptions seen."""
    for step in range(400):
        for request in arrivals.get(step, []):
            scheduler.add(request)
        if step in abort_at and scheduler.abort(abort_at[step]) is not None:
            batch.remove(abort_at[step])
        output = scheduler.schedule()
        for request_id in output.preempted_request_ids:
            batch.remove(request_id)
        if output.chunks:
            expected = _reference(output, scheduler.kv.block_table, scheduler.kv.block_size)
            arrays = batch.prepare(output.chunks, scheduler.kv.block_table)
            _check(arrays, expected)
            _sample_and_update(scheduler, batch, output, arrays, rng, max_token=1000)
        live = {r.request_id for r in scheduler.running}
        assert set(batch._row_of) <= live | set(scheduler.requests), "a row outlived its request"
        assert batch.num_rows <= len(scheduler.running)
        if step > max(arrivals) and not scheduler.has_work:
            return
    raise AssertionError("did not finish")


def test_rows_match_a_token_by_token_reference_through_chunks_preemption_finish_and_abort():
    rng = random.Random(0)
    scheduler = make_scheduler(num_blocks=24, block_size=4, max_num_seqs=6, token_budget=16, max_model_len=256)
    batch = InputBatch(scheduler.kv.block_size, CPU)
    arrivals = {}
    for index in range(14):
        prompt = [rng.randrange(3, 30000) for _ in range(rng.choice([1, 3, 9, 23, 40]))]
        arrivals.setdefault(rng.randrange(0, 30), []).append(_request(f"r{index}", prompt, rng.randrange(2, 20)))
    _drive(scheduler, batch, arrivals, abort_at={12: "r3", 25: "r7"}, rng=rng)
    assert scheduler.num_preemptions > 0, "the pool was meant to run short"
    assert batch.num_rows == 0 and len(batch._free_rows) == len(batch._num_tokens)


def test_a_preempted_request_gets_a_fresh_row_even_if_nobody_told_the_batch():
    scheduler = make_scheduler(num_blocks=64, block_size=4, max_num_seqs=4, token_budget=64)
    batch = InputBatch(4, CPU)
    request = _request("a", list(range(3, 12)), 8)
    scheduler.add(request)
    output = scheduler.schedule()
    arrays = batch.prepare(output.chunks, scheduler.kv.block_table)
    batch.record_sampled(arrays, [5])
    scheduler.update(output, {"a": 5})
    # Recompute preemption behind the batch's back: new blocks, num_computed_tokens back to 0.
    scheduler._preempt(request, 0.0, next(iter(scheduler.num_preemptions_by_cause)))
    scheduler.preempted_kv.settle(scheduler.waiting, 0.0, len(scheduler.running))
    output = scheduler.schedule()
    assert output.chunks and output.chunks[0].request is request and request.num_computed_tokens == 0
    expected = _reference(output, scheduler.kv.block_table, 4)
    _check(batch.prepare(output.chunks, scheduler.kv.block_table), expected)


def test_rows_are_reused_and_the_step_order_is_the_chunk_order():
    batch = InputBatch(4, CPU)
    tables = {"a": [7], "b": [3, 4], "c": [9]}
    requests = {
        rid: _request(rid, list(range(10 * i + 3, 10 * i + 3 + n)), 4, seed=i, temperature=0.5 * i)
        for i, (rid, n) in enumerate((("a", 2), ("b", 6), ("c", 3)))
    }

    def step(order: list[str]) -> object:
        chunks = [ScheduledChunk(requests[r], requests[r].num_tokens, True, requests[r].num_tokens) for r in order]
        return batch.prepare(chunks, tables.__getitem__)

    arrays = step(["a", "b"])
    assert arrays.rows.tolist() == [batch.row_of("a"), batch.row_of("b")]
    batch.remove("a")
    arrays = step(["c", "b"])  # c takes a's freed row; b keeps its own
    assert arrays.rows.tolist()[0] == 0 and batch.row_of("b") == 1 and batch.row_of("a") is None
    assert arrays.input_ids.tolist() == requests["c"].prompt_token_ids + requests["b"].prompt_token_ids
    assert arrays.slot_mapping.tolist() == [36, 37, 38, 12, 13, 14, 15, 16, 17]
    assert batch.temperature[[batch.row_of("c"), batch.row_of("b")]].tolist() == [1.0, 0.5]
    assert batch.seed[batch.row_of("c")] == 2


def test_capacities_grow_for_many_rows_long_sequences_and_wide_tables():
    batch = InputBatch(2, CPU)
    rng = np.random.default_rng(0)
    requests = [_request(f"r{i}", rng.integers(3, 999, size=300 + i).tolist(), 4) for i in range(40)]
    tables = {r.request_id: list(range(1000 + 200 * i, 1000 + 200 * i + 151 + i)) for i, r in enumerate(requests)}
    chunks = [ScheduledChunk(r, r.num_tokens, True, r.num_tokens) for r in requests]
    output = SchedulerOutput(chunks)
    for r in requests:
        r.num_computed_tokens = 0
    _check(batch.prepare(chunks, tables.__getitem__), _reference(output, tables.__getitem__, 2))
    assert batch.num_rows == 40 and batch.token_ids.shape[1] >= 339 and batch.block_table.shape[1] >= 190


def test_pinned_staging_only_with_cuda():
    assert InputBatch(16, CPU)._pin is False
    if torch.cuda.is_available():
        assert InputBatch(16, torch.device("cuda"))._pin is True


def test_an_eos_token_is_recorded_like_any_other():
    batch = InputBatch(4, CPU)
    request = _request("a", [5, 6, 7], 4)
    chunk = ScheduledChunk(request, 3, True, 3)
    arrays = batch.prepare([chunk], lambda _: [2])
    batch.record_sampled(arrays, [EOS])
    assert batch.token_ids[batch.row_of("a"), :4].tolist() == [5, 6, 7, EOS]
    assert request.status is RequestStatus.WAITING  # the batch never touches the request


def test_the_engine_leaves_no_row_behind_after_finishes_preemptions_and_aborts():
    from tests.engine_model import greedy, make_core, new_request

    core = make_core(num_blocks=12, block_size=8, token_budget=32)  # 96 positions: preemptions happen
    prompts = [[5 + i] * (9 + 11 * i) for i in range(5)]
    for index, prompt in enumerate(prompts):
        core.add(new_request(f"r{index}", prompt, greedy(12)))
    for step in range(500):
        if step == 3:
            core.abort("r1")
        core.step()
        assert core.runner.batch.num_rows <= len(core.scheduler.running)
        if not core.scheduler.has_work:
            break
    assert core.scheduler.num_preemptions > 0
    assert core.runner.batch.num_rows == 0 and core.scheduler.kv.pool.num_free_blocks == 12


def test_decode_columns_skip_the_preemption_scan_only_while_the_schedulers_count_stands_still():
    """_rows_of with a status-change count: an equal count reuses the rows without reading each request's
    preemption count; a moved count (a preemption since) finds the request preempted behind the batch's back."""
    batch = InputBatch(4, CPU)
    requests = [_request(name, [3, 4, 5], 8) for name in "abc"]
    first, _ = batch._rows_of(requests, 5)
    requests[1].num_preemptions += 1  # preempted and re-admitted without the batch being told
    assert batch._rows_of(requests, 5)[0] is first  # same count: no scan (the scheduler says nothing changed)
    assert batch._epoch[first[1]] == 0  # the row was not renewed
    moved, rows = batch._rows_of(requests, 6)
    assert moved is not first and rows.tolist() == moved
    assert batch._epoch[moved[1]] == 1 and batch._epoch[moved[0]] == batch._epoch[moved[2]] == 0  # a fresh row
    assert batch._rows_of(requests, -1)[0] == moved  # unknown count: the scan, which finds nothing new
