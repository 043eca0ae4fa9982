"""KV block bookkeeping: a pool of fixed-size blocks and each request's block table.

A block holds the keys and values of `block_size` consecutive token positions of one request,
in every layer. A request's block table maps its logical blocks to physical ones:

    positions 0..15 -> logical block 0 -> physical block table[0]
    positions 16..31 -> logical block 1 -> physical block table[1]
    slot of position p = table[p // block_size] * block_size + p % block_size

A block is not a slot: a slot is one token position inside a block. Plain Python, no torch: the
scheduler decides with these counts, the model runner turns tables into tensors.
"""

from __future__ import annotations


def num_blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold num_tokens positions."""
    return -(-num_tokens // block_size)


class BlockPool:
    """Free list of physical block ids. Invariant: used + free == total, no id in both."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be > 0, got {num_blocks}")
        self.num_blocks_total = num_blocks
        # Pop from the end: freshly freed blocks are reused first (warm in cache).
        self._free_block_ids: list[int] = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_block_ids)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks_total - len(self._free_block_ids)

    def allocate(self, num_blocks: int) -> list[int]:
        """Takes num_blocks ids; raises MemoryError (allocating nothing) when too few are free."""
        if num_blocks > len(self._free_block_ids):
            raise MemoryError(f"need {num_blocks} KV blocks, {len(self._free_block_ids)} free")
        taken = self._free_block_ids[len(self._free_block_ids) - num_blocks :]
        del self._free_block_ids[len(self._free_block_ids) - num_blocks :]
        return taken

    def free(self, block_ids: list[int]) -> None:
        self._free_block_ids.extend(reversed(block_ids))


class KvBlockManager:
    """Per-request block tables over one BlockPool."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be > 0, got {block_size}")
        self.block_size = block_size
        self.pool = BlockPool(num_blocks)
        self._block_tables: dict[str, list[int]] = {}

    def block_table(self, request_id: str) -> list[int]:
        """Physical block ids of the request, in logical order (empty if it holds none)."""
        return self._block_tables.get(request_id, [])

    def can_fit(self, num_tokens: int) -> bool:
        """Whether a request of num_tokens positions could ever fit in the whole pool."""
        return num_blocks_for(num_tokens, self.block_size) <= self.pool.num_blocks_total

    def allocate_slots(self, request_id: str, num_tokens: int, keep_free_blocks: int = 0) -> bool:
        """Grows the request's table to hold num_tokens positions; False (no change) if short, or if the
        growth would leave fewer than keep_free_blocks blocks free (the scheduler's readmission headroom)."""
        table = self._block_tables.setdefault(request_id, [])
        if num_tokens <= len(table) * self.block_size:  # the common decode step: room in the last block
            return True
        missing = num_blocks_for(num_tokens, self.block_size) - len(table)
        if missing <= 0:
            return True
        if missing + keep_free_blocks > self.pool.num_free_blocks:
            if not table:
                del self._block_tables[request_id]
            return False
        table.extend(self.pool.allocate(missing))
        return True

    def allocate_slots_for_all(self, request_ids: list[str], num_tokens: list[int]) -> bool:
        """allocate_slots for every (request, num_tokens) pair, all or nothing: False (no change) when the
        pool cannot cover them all. Each table gets the block ids one allocate_slots call per pair, in
        order, would give it, taken off the free list in one slice (the steady decode step: the ~1 / block
        size of running decodes whose next position opens a block)."""
        tables, block_size, short = self._block_tables, self.block_size, []
        for request_id, count in zip(request_ids, num_tokens, strict=True):
            table = tables.setdefault(request_id, [])
            missing = -(-count // block_size) - len(table)
            if missing > 0:
                short.append((table, missing))
        total = sum(missing for _, missing in short)
        if total > self.pool.num_free_blocks:
            for request_id in request_ids:  # as allocate_slots: no empty table left behind
                if not tables[request_id]:
                    del tables[request_id]
            return False
        taken, end = self.pool.allocate(total), total
        for table, missing in short:  # one allocate() each would take the tail's last `missing` ids, in order
            table.extend(taken[end - missing : end])
            end -= missing
        return True

    def trim(self, request_id: str, num_tokens: int) -> int:
        """Keeps the blocks holding positions < num_tokens and returns the rest to the pool (a verify's
        rejected draft positions); the number freed."""
        table = self._block_tables.get(request_id)
        if table is None:
            return 0
        keep = num_blocks_for(num_tokens, self.block_size)
        if keep >= len(table):
            return 0
        surplus = table[keep:]
        del table[keep:]
        self.pool.free(surplus)
        return len(surplus)

    def free(self, request_id: str) -> int:
        """Returns every block of the request to the pool; the number freed."""
        table = self._block_tables.pop(request_id, [])
        self.pool.free(table)
        return len(table)

    @property
    def num_requests_holding_blocks(self) -> int:
        return len(self._block_tables)
