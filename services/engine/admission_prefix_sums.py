"""Sums of values at most x over a changing multiset of non-negative floats, in a bounded number of steps.

Deadline admission asks, for every admitted request, "how many predicted tokens did the requests
admitted over the last minute with a prediction <= mine bring?" (admission_inflow). Summing the
window each time costs O(admissions in the window) per request, which grows with the engine's
throughput. Here each value maps to an integer key in the same order, and a Fenwick tree over the
whole key range keeps the count and sum of every prefix:

    value -> key: its IEEE-754 bits + 1 (for floats >= 0 the bit patterns sort like the values)
    add(value) / remove(value)    touch the <= 63 nodes on the update path of its key
    sum_at_most(x)                adds the <= 63 nodes on the query path of key(x)

    node i covers keys (i - lowbit(i), i]:      i = 0b1011000 covers 0b1010001 .. 0b1011000

Only nodes with a live value under them exist (one dict), so memory is O(live values x 63) and a
value that leaves frees its nodes. A node packs its count and its sum into one Python int
(count << 192 | sum), one dict read and write per step: on this machine (load 6.6) ~6 us per add or
remove and ~1.4 us per sum, where summing the window took 26 us at 1,200 values and 268 us at 10,000. Sums are fixed point (2**-32 of a unit, exact ints), so adding
and removing never leaves rounding residue: an empty window sums to exactly 0 however many values
passed through it, and every answer is the exact sum of the quantized values (within n x 2**-33 of
the float sum).

Invariant: for every node i, `_nodes[i]` = (number of live values with key in (i - lowbit(i), i]) << 192
+ their fixed-point sum; a node with no live value is absent.
"""

from __future__ import annotations

import struct

_MAX_KEY = 1 << 63  # keys of non-negative finite floats are 1 .. 2**63 - 2**52 (Fenwick indices start at 1)
_FIXED_POINT_SCALE = 1 << 32  # fractions of a unit kept exactly
MAX_VALUE = float(1 << 52)  # so that one value's fixed point fits 84 bits and 2**100 of them fit a node's sum
_COUNT_SHIFT = 192  # a node's sum (< 2**84 x the number of values) stays below its count field
_ONE = 1 << _COUNT_SHIFT


def order_key(value: float) -> int:
    """An integer in [1, 2**63) with a < b <=> order_key(a) < order_key(b) for 0 <= a, b (-0.0 is 0.0)."""
    return struct.unpack("<Q", struct.pack("<d", value + 0.0))[0] + 1  # + 0.0 turns -0.0 into 0.0


class PrefixSums:
    """A multiset of floats in [0, MAX_VALUE] with add, remove and "sum of the values <= x" in <= 63 steps."""

    def __init__(self) -> None:
        self._nodes: dict[int, int] = {}
        self.num_values = 0

    def add(self, value: float) -> None:
        self._update(value, +1)

    def remove(self, value: float) -> None:
        """Removes one occurrence of `value`, which must have been added and not removed since."""
        self._update(value, -1)

    def sum_at_most(self, bound: float) -> float:
        """The sum of the values <= bound (0.0 for a NaN or negative bound: no value compares <= it)."""
        if not bound >= 0:
            return 0.0
        index = order_key(min(bound, MAX_VALUE))
        total = 0
        while index > 0:
            total += self._nodes.get(index, 0) & (_ONE - 1)  # the sum field only
            index &= index - 1  # drop the lowest set bit: the node before this one's range
        return total / _FIXED_POINT_SCALE

    def _update(self, value: float, sign: int) -> None:
        if not 0 <= value <= MAX_VALUE:
            raise ValueError(f"values must be in [0, {MAX_VALUE:.0f}], got {value}")
        delta = sign * (_ONE + round(value * _FIXED_POINT_SCALE))
        index = order_key(value)
        nodes = self._nodes
        if sign < 0 and index not in nodes:  # its own leaf node is empty: never added
            raise ValueError(f"{value} is not in the multiset")
        while index <= _MAX_KEY:
            node = nodes.get(index, 0) + delta
            if node >= _ONE:
                nodes[index] = node
            else:  # nothing live under this node any more
                del nodes[index]
            index += index & -index  # the next node whose range covers this key
        self.num_values += sign
