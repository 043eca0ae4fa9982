"""Steady decode steps' inputs, advanced in place (steady_staging.py), equal a token-by-token reference.

A real scheduler drives 40 requests (enough for the steady decode columns) over blocks of 4 positions,
so rows open a block every few steps; requests arrive late (a prefill between steady steps), finish at
different lengths and one is aborted. Every step's arrays, built afresh or advanced, are checked
against the reference computed from the requests themselves.
"""

import random

import torch

from services.engine.input_batch import InputBatch
from services.engine.steady_staging import SteadyStaging
from tests.engine_factories import make_scheduler
from tests.test_engine_input_batch import _check, _reference, _request, _sample_and_update

CPU = torch.device("cpu")


class _CountingStaging(SteadyStaging):
    """Counts the steps advanced in place and the layouts built."""

    num_advanced = num_built = 0

    def _advance(self, *args) -> None:
        type(self).num_advanced += 1
        super()._advance(*args)

    def _build(self, *args):
        type(self).num_built += 1
        return super()._build(*args)


def test_steady_steps_match_the_reference_through_new_blocks_arrivals_finishes_and_an_abort():
    rng = random.Random(3)
    scheduler = make_scheduler(num_blocks=900, block_size=4, max_num_seqs=48, token_budget=512, max_model_len=256)
    batch = InputBatch(scheduler.kv.block_size, CPU)
    batch._steady = _CountingStaging(4, CPU, False)
    for index in range(40):
        prompt = [rng.randrange(3, 900) for _ in range(rng.randrange(1, 12))]
        scheduler.add(_request(f"r{index}", prompt, 16 + 8 * (index % 3) if index < 6 else 60))
    late = {9: _request("late", [5, 6, 7, 8, 9], 12)}
    previous, num_advanced = None, 0
    for step in range(80):
        if step in late:
            scheduler.add(late[step])
        if step == 20 and scheduler.abort("r5") is not None:
            batch.remove("r5")
        output = scheduler.schedule()
        if output.is_empty:
            break
        arrays = batch.prepare(output.tail, scheduler.kv.block_table, output.decodes)
        _check(arrays, _reference(output, scheduler.kv.block_table, 4))
        if previous is not None and _CountingStaging.num_advanced > num_advanced:  # the same tensors, rewritten
            assert arrays.input_ids is previous.input_ids and arrays.slot_mapping is previous.slot_mapping
        previous, num_advanced = arrays, _CountingStaging.num_advanced
        _sample_and_update(scheduler, batch, output, arrays, rng, max_token=900)
    assert _CountingStaging.num_advanced > 30, "the steady steps were meant to advance in place"
    assert _CountingStaging.num_built > 3, "arrivals, finishes, the abort and wider tables rebuild"


def test_a_step_prepared_twice_is_built_afresh_with_the_same_inputs():
    scheduler = make_scheduler(num_blocks=400, block_size=4, max_num_seqs=40, token_budget=512)
    batch = InputBatch(4, CPU)
    for index in range(36):
        scheduler.add(_request(f"r{index}", [3 + index, 4, 5], 30))
    for _ in range(3):
        output = scheduler.schedule()
        arrays = batch.prepare(output.tail, scheduler.kv.block_table, output.decodes)
        batch.record_sampled(arrays, [7] * len(arrays.sample_indices))
        scheduler.update(output, {c.request.request_id: 7 for c in output.chunks})
    output = scheduler.schedule()
    assert output.decodes is not None and not output.tail
    expected = _reference(output, scheduler.kv.block_table, 4)
    _check(batch.prepare(output.tail, scheduler.kv.block_table, output.decodes), expected)
    _check(batch.prepare(output.tail, scheduler.kv.block_table, output.decodes), expected)  # not advanced again
