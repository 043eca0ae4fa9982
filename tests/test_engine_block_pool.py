"""Block pool and block tables: allocation, growth, freeing, and the used + free invariant."""

import random

import pytest

from services.engine.block_pool import BlockPool, KvBlockManager, num_blocks_for


def test_num_blocks_for_rounds_up():
    assert [num_blocks_for(n, 16) for n in (0, 1, 16, 17, 32, 33)] == [0, 1, 1, 2, 2, 3]


def test_pool_allocates_distinct_blocks_and_refuses_when_short():
    pool = BlockPool(4)
    first = pool.allocate(3)
    assert len(set(first)) == 3 and pool.num_free_blocks == 1
    with pytest.raises(MemoryError):
        pool.allocate(2)
    assert pool.num_free_blocks == 1  # a refused allocation takes nothing
    pool.free(first)
    assert pool.num_free_blocks == 4 and pool.num_used_blocks == 0


def test_pool_rejects_empty_size():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockPool(0)


def test_block_table_grows_only_when_a_block_boundary_is_crossed():
    kv = KvBlockManager(num_blocks=8, block_size=4)
    assert kv.allocate_slots("a", 3)
    assert len(kv.block_table("a")) == 1
    assert kv.allocate_slots("a", 4)
    assert len(kv.block_table("a")) == 1
    assert kv.allocate_slots("a", 5)
    assert len(kv.block_table("a")) == 2
    assert kv.free("a") == 2
    assert kv.pool.num_free_blocks == 8 and kv.block_table("a") == []


def test_failed_growth_changes_nothing():
    kv = KvBlockManager(num_blocks=3, block_size=4)
    assert kv.allocate_slots("a", 8)
    assert not kv.allocate_slots("b", 9)
    assert kv.block_table("b") == [] and kv.num_requests_holding_blocks == 1
    assert kv.pool.num_free_blocks == 1


def test_can_fit_is_about_the_whole_pool():
    kv = KvBlockManager(num_blocks=3, block_size=4)
    assert kv.can_fit(12) and not kv.can_fit(13)


def test_random_allocations_never_share_or_leak_blocks():
    rng = random.Random(0)
    kv = KvBlockManager(num_blocks=50, block_size=4)
    sizes: dict[str, int] = {}
    for step in range(3000):
        request_id = f"r{rng.randrange(12)}"
        if rng.random() < 0.3:
            kv.free(request_id)
            sizes.pop(request_id, None)
        else:
            target = sizes.get(request_id, 0) + rng.randrange(1, 9)
            if kv.allocate_slots(request_id, target):
                sizes[request_id] = target
        tables = [kv.block_table(r) for r in sizes]
        held = [block for table in tables for block in table]
        assert len(held) == len(set(held)), f"a block is in two tables at step {step}"
        assert len(held) + kv.pool.num_free_blocks == 50
    for request_id in list(sizes):
        kv.free(request_id)
    assert kv.pool.num_free_blocks == 50


def test_allocating_for_many_requests_at_once_gives_what_one_call_each_gives():
    rng = random.Random(3)
    for _ in range(50):
        one_by_one, at_once = KvBlockManager(64, 4), KvBlockManager(64, 4)
        for kv in (one_by_one, at_once):  # the same history: some tables, some blocks freed
            for index in range(6):
                kv.allocate_slots(f"r{index}", 1 + 3 * index)
            kv.free("r2")
        ids = [f"r{index}" for index in rng.sample(range(8), 5)]  # r6, r7: no table yet; r2: freed
        counts = [rng.randint(1, 24) for _ in ids]
        assert at_once.allocate_slots_for_all(ids, counts)
        for request_id, count in zip(ids, counts):
            assert one_by_one.allocate_slots(request_id, count)
        assert {r: at_once.block_table(r) for r in ids} == {r: one_by_one.block_table(r) for r in ids}
        assert at_once.pool._free_block_ids == one_by_one.pool._free_block_ids


def test_allocating_for_many_requests_is_all_or_nothing():
    kv = KvBlockManager(5, 4)
    kv.allocate_slots("a", 8)  # 2 blocks, 3 free
    free_before, table_before = list(kv.pool._free_block_ids), list(kv.block_table("a"))
    assert not kv.allocate_slots_for_all(["a", "b", "c"], [12, 4, 8])  # needs 1 + 1 + 2 = 4
    assert kv.pool._free_block_ids == free_before and kv.block_table("a") == table_before
    assert kv.num_requests_holding_blocks == 1  # no empty table left for b or c
    assert kv.allocate_slots_for_all(["a", "b", "c"], [12, 4, 4]) and kv.pool.num_free_blocks == 0
