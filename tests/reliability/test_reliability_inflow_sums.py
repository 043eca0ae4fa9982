"""Deadline admission's inflow sums (services/engine/admission_prefix_sums.py, admission_inflow.py):
the Fenwick tree gives the answers of summing the window directly, in a fixed number of steps."""

from __future__ import annotations

import random

import pytest

from services.engine.admission_inflow import AdmittedInflow
from services.engine.admission_prefix_sums import MAX_VALUE, PrefixSums, order_key


def test_order_keys_sort_like_the_floats():
    values = [0.0, 5e-324, 1e-300, 0.5, 1.0, 1.0000000000000002, 63.0, 64.0, 1e15, MAX_VALUE]
    keys = [order_key(v) for v in values]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert order_key(-0.0) == order_key(0.0) == 1
    assert max(keys) < 2**63


def test_prefix_sums_match_a_direct_sum_through_adds_and_removes():
    rng = random.Random(7)
    sums, live = PrefixSums(), []
    for step in range(3_000):
        if live and rng.random() < 0.45:
            sums.remove(live.pop(rng.randrange(len(live))))
        else:
            value = rng.choice([rng.uniform(0.5, 300.0), float(rng.randint(1, 64)), 256.0])  # ties too
            sums.add(value)
            live.append(value)
        bound = rng.choice([rng.uniform(0.0, 320.0), *live[-1:]])  # a bound equal to a live value included
        assert sums.sum_at_most(bound) == pytest.approx(sum(v for v in live if v <= bound), rel=1e-12, abs=1e-6)
        assert sums.num_values == len(live), step
    for value in list(live):
        sums.remove(value)
    assert sums.sum_at_most(float("inf")) == 0.0  # exactly: fixed point leaves no rounding residue
    assert not sums._nodes  # every node freed


def test_prefix_sums_refuse_what_they_cannot_hold():
    sums = PrefixSums()
    for bad in (float("nan"), float("inf"), -1.0, 2 * MAX_VALUE):
        with pytest.raises(ValueError, match="values must be in"):
            sums.add(bad)
    with pytest.raises(ValueError, match="not in the multiset"):
        sums.remove(3.0)
    sums.add(3.0)
    assert sums.sum_at_most(float("nan")) == sums.sum_at_most(-1.0) == 0.0  # nothing compares <= them
    assert sums.sum_at_most(float("inf")) == 3.0


def test_the_inflow_rate_equals_the_window_summed_directly():
    """The previous implementation's answer (a sum over the window's admissions) at every check."""
    now = [0.0]
    rng = random.Random(3)
    inflow = AdmittedInflow(window_s=60.0, clock=lambda: now[0])
    admitted: list[tuple[float, float]] = []
    for _ in range(4_000):
        now[0] += rng.expovariate(20.0)  # ~20 admissions per second: ~1,200 in the window
        tokens = rng.uniform(1.0, 120.0)
        inflow.on_admitted(tokens)
        admitted.append((now[0], tokens))
        own = rng.uniform(1.0, 120.0)
        direct = sum(t for at, t in admitted if at >= now[0] - 60.0 and t <= own) / 60.0
        expected = direct if now[0] >= 60.0 else 0.0  # no rate before a whole window (see its docstring)
        assert inflow.tokens_per_s_at_most(own) == pytest.approx(expected, rel=1e-12, abs=1e-9)
    now[0] += 61.0
    assert inflow.tokens_per_s_at_most(1e9) == 0.0  # the window emptied: exactly nothing
