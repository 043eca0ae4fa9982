"""The int8 KV pool of the simulator's cost model, and the capacity method's configurations and walk."""

import dataclasses

import numpy as np
import pytest

from services.bench.sim.capacity import CapacityConfig, parse_configs, run_capacity, table_lines
from services.bench.sim.gpu_presets import GB, PRESETS, KvDtype
from services.bench.sim.kv_codecs import KvLayout
from services.bench.sim.predictions import noisy_oracle_distributions
from services.bench.sim.simulator import EngineShape
from services.bench.steady_state import SteadyStateWindow
from services.bench.workload import TraceRequest
from services.engine.scheduler import ScheduledChunk, SchedulerOutput
from services.memory.eviction_policy import KvCodec

BF16 = dataclasses.replace(PRESETS["llama3-8b-h100"], kv_cache_bytes_override=4 * GB)
INT8 = dataclasses.replace(BF16, kv_dtype=KvDtype.INT8)


def _decode_batch(num_requests: int, context: int) -> SchedulerOutput:
    chunks = [ScheduledChunk(None, 1, True, context) for _ in range(num_requests)]
    return SchedulerOutput(chunks, [], [])


def test_an_int8_pool_holds_twice_the_tokens_less_its_scales():
    model = BF16.model
    elements = 2 * model.num_layers * model.num_kv_heads * model.head_dim
    assert BF16.kv_bytes_per_token == 2 * elements
    assert INT8.kv_bytes_per_token == elements + 4 * 2 * model.num_layers * model.num_kv_heads / 16
    assert INT8.num_kv_blocks / BF16.num_kv_blocks == pytest.approx(2 / (1 + 4 / (16 * model.head_dim)), rel=1e-3)


def test_int8_decode_steps_read_half_the_kv_and_pay_for_quantizing():
    batch = _decode_batch(64, 2000)
    bandwidth = BF16.gpu.bandwidth_bytes_per_s * BF16.bandwidth_efficiency
    kv_read_s = batch.num_kv_tokens_read * BF16.model.kv_bytes_per_token / bandwidth
    bf16_s, int8_s = BF16.step_time_s(batch), INT8.step_time_s(batch)
    assert bf16_s - int8_s == pytest.approx(
        kv_read_s * (1 - INT8.kv_bytes_per_token / BF16.kv_bytes_per_token)
        - 64 * (INT8.kv_write_bytes_per_token - BF16.kv_write_bytes_per_token) / bandwidth,
        rel=1e-6,
    )
    slower = dataclasses.replace(INT8, int8_attention_efficiency=0.5)
    assert slower.step_time_s(batch) > int8_s


def test_bf16_pool_is_unchanged_by_the_dtype_field():
    batch = _decode_batch(10, 500)
    model = BF16.model
    memory = model.weight_bytes + model.kv_bytes_per_token * (batch.num_kv_tokens_read + batch.num_scheduled_tokens)
    expected = BF16.step_overhead_s + memory / (BF16.gpu.bandwidth_bytes_per_s * BF16.bandwidth_efficiency)
    assert BF16.step_time_s(batch) == pytest.approx(expected)


def test_swapping_an_int8_pool_moves_its_own_bytes():
    layout = KvLayout(32, 8, 128, 16, full_bytes_per_element=INT8.kv_bytes_per_token / (BF16.kv_bytes_per_token / 2))
    assert layout.block_bytes(KvCodec.FULL) == pytest.approx(16 * INT8.kv_bytes_per_token, abs=1)


def test_configurations_parse_and_refuse():
    configs = parse_configs("fcfs:bf16,alise:int8:swap", ["fcfs", "alise"], ["bf16", "int8"])
    assert configs == (CapacityConfig("fcfs", "bf16"), CapacityConfig("alise", "int8", "swap"))
    assert [c.label for c in configs] == ["fcfs-bf16", "alise-int8+swap"]
    for bad in ("fcfs", "fcfs:fp8", "lifo:bf16", "fcfs:bf16:teleport", "fcfs:bf16,fcfs:bf16"):
        with pytest.raises(ValueError):
            parse_configs(bad, ["fcfs", "alise"], ["bf16", "int8"])


def test_the_walk_stops_at_the_first_unsustained_rate_and_int8_sustains_more():
    rng = np.random.default_rng(0)
    trace = [TraceRequest(f"r{i}", None, int(rng.integers(50, 600)), int(rng.integers(20, 600))) for i in range(250)]
    predictions, _ = noisy_oracle_distributions([t.num_output_tokens for t in trace], target_tau=0.6, seed=0)
    small = dataclasses.replace(BF16, kv_cache_bytes_override=0.5 * GB)
    costs = {"bf16": small, "int8": dataclasses.replace(small, kv_dtype=KvDtype.INT8)}
    configs = (CapacityConfig("fcfs", "bf16"), CapacityConfig("fcfs", "int8"))
    unloaded, figures = run_capacity(
        trace,
        predictions,
        configs,
        make=lambda c: (costs[c.kv_dtype], None),
        shape=EngineShape(),
        bound_multiples=(4.0,),
        fractions=(0.5, 1.0, 2.0, 3.0),
        window=SteadyStateWindow(),
        seed=0,
        concurrency=64,
        progress=lambda _: None,
    )
    assert unloaded > 0
    base, int8 = figures
    assert int8.num_kv_blocks > 1.9 * base.num_kv_blocks
    assert int8.capacity_per_s > base.capacity_per_s
    for figure in figures:  # every point but the last is sustained
        assert all(p.is_sustained(4.0 * unloaded) for p in figure.points[:-1])
    assert "fcfs-int8" in "\n".join(table_lines(figures))


def test_no_interpolation_toward_an_unstable_run():
    from services.bench.sim.capacity import _sustained
    from services.bench.sustainable_rate import RatePoint

    points = [RatePoint(10.0, 1.0, 2.0, False), RatePoint(20.0, 3.0, 9.0, True)]
    assert _sustained(points, 2.0) == 10.0  # the 2x-like bound: not 15
    assert _sustained(points, 4.0) == 10.0
    assert _sustained([RatePoint(10.0, 1.0, 2.0, False), RatePoint(20.0, 3.0, 9.0, False)], 2.0) == 15.0
