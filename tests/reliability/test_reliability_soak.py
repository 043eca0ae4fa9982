"""A short soak: 64 streams in flight with bursts, then every stream replayed and compared exactly.

Two engines (KV pools small enough that requests are preempted and swapped to the memory service),
the predictor, the gateway; seeded sampling with ignore_eos, so each stream's tokens are fixed by
its prompt and seed up to the last bits of the logits. After the load: every stream exactly
max_tokens long (no loss, no duplicate), replays equal token for token (swaps lossless, so only a
rare sample moved by batch numerics may differ), every block and slot free, the ledger consistent, RSS bounded.
(`alise bench soak` runs the 30-minute form.)
"""

from __future__ import annotations

import pytest
import pytest_asyncio

from services.bench.chaos_load import LoadShape
from services.bench.chaos_stack import ENGINE_ARGS, MEMORY_ARGS, ChaosStack, ChaosStackConfig
from services.bench.soak_run import soak

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory):
    config = ChaosStackConfig(
        log_dir=tmp_path_factory.mktemp("soak"),
        engine_args=(*ENGINE_ARGS, "--num-kv-blocks", "64"),
        # swaps keep KV exact (no int8/int4 codec), so a replay can differ only by batch numerics
        memory_args=(*MEMORY_ARGS, "--max-kv-relative-error", "0"),
    )
    stack = ChaosStack(config)
    await stack.start()
    yield stack
    await stack.stop()


async def test_soak_every_token_replays_exactly_and_nothing_leaks(stack):
    shape = LoadShape(concurrency=64, min_tokens=8, max_tokens=40, timeout_s=120.0)
    result = await soak(stack, duration_s=20.0, shape=shape, burst_every_s=5.0, burst_size=32)
    print(result.to_json())
    assert result.codes == {"OK": result.num_streams}, result
    assert result.num_wrong_length == 0, result  # no stream lost or duplicated a token
    # Swaps are lossless here (--max-kv-relative-error 0): with int8/int4 swaps ~6% of replays
    # diverged (the codec's bounded error moves a sample). What remains is batch numerics: the CPU
    # logits of a row are not batch-invariant, which flips a sampled token now and then: 55 of
    # 15,991 streams (0.34%) in the 30-minute soak, 0 of 473 and 2 of 546 in runs of this test. A
    # lossy swap or a lost/reordered token would hit the swapped or preempted streams (~25-30 here)
    # wholesale, so more than 1% of the streams (at least 2 allowed) is a real defect.
    assert result.num_mismatched <= max(2, result.num_streams // 100), result
    assert result.num_replayed == result.num_streams
    assert not any(result.engine_blocks_used_after.values()) and result.host_blocks_used_after == 0, result
    assert result.ledger_consistent
    assert all(growth < 0.25 for growth in result.rss_growth.values()), result  # bench goal: < 10 % over 30 min
