"""Abort storm across prefill, decode, swap-out and swap-in: 0 blocks leaked in any tier.

One engine with a scarce KV pool (40 blocks of 16 tokens) and the memory service's host tier, so
preempted requests are swapped out and restored during the storm; 200 streams, 24 at a time, each
cancelled by its client after a random delay. Then every engine block and host slot must be free
and the memory ledger consistent. (`alise bench chaos` runs 10,000.)
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from services.bench.chaos_aborts import abort_storm
from services.bench.chaos_stack import ENGINE_ARGS, ChaosStack, ChaosStackConfig

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory):
    config = ChaosStackConfig(
        log_dir=tmp_path_factory.mktemp("aborts"),
        num_engines=1,
        with_predictor=False,
        engine_args=(*ENGINE_ARGS, "--num-kv-blocks", "40", "--deadline-admission-slack", "0"),
    )
    stack = ChaosStack(config)
    await stack.start()
    yield stack
    await stack.stop()


async def test_an_abort_storm_leaks_no_block_and_no_slot(stack):
    result = await abort_storm(stack, num_streams=200, concurrency=24, max_delay_s=1.5)
    print(result.to_json())
    assert result.num_leaked == 0, result
    assert result.ledger_consistent, result
    assert result.num_aborted > 100, result
    assert result.num_aborted_before_first_token > 0 and result.num_aborted_while_decoding > 0, result
    assert result.num_swapped_out > 0 and result.num_restored > 0, result  # the swap paths were exercised
