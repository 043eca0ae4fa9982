"""The simulator's KV offload: plan decisions, clock charges, host tier bookkeeping, and whole runs."""

import argparse
import json

import numpy as np
import pytest

from services.bench.arrivals import arrival_times_s
from services.bench.results import build_report
from services.bench.sim import cli as sim_cli
from services.bench.sim import simulator
from services.bench.sim.gpu_presets import BLOCK_SIZE_TOKENS, PRESETS
from services.bench.sim.kv_codecs import CodecTimes, KvLayout, codec_costs
from services.bench.sim.kv_offload import KvOffloadConfig, OffloadMode, SimKvOffload
from services.bench.sim.predictions import noisy_oracle_distributions
from services.bench.sim.sim_request import make_sim_request
from services.bench.sim.simulator import EngineShape, simulate
from services.bench.sim.sweep import SweepConfig, run_sweep
from services.bench.workload import TraceRequest
from services.engine.length_distribution import LengthDistribution
from services.engine.scheduler.kv_eviction import EvictedKv, KvRestore
from services.memory.eviction_policy import KvCodec

# One layer, one KV head of 32 dims: a full block is 2 x 32 x 16 x 2 = 2048 bytes, and a link of
# 2048 B/s moves it in exactly 1 s; the GPU is so fast that (de)quantizing costs ~nothing.
TINY = KvLayout(num_layers=1, num_kv_heads=1, head_dim=32, block_size_tokens=16)
TINY_TIMES = CodecTimes(link_bytes_per_s=2048.0, gpu_bytes_per_s=1e15)
BLOCK_S = 1.0  # seconds to move one full tiny block


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _handler(mode=OffloadMode.SWAP, host_blocks=64, budget=0.1, prefetch=True):
    config = KvOffloadConfig(mode, TINY, TINY_TIMES, host_blocks * 2048, 2048, budget, prefetch=prefetch)
    clock = Clock()
    return SimKvOffload(config, clock), clock


def _request(request_id: str, num_prompt_tokens: int = 16):
    return make_sim_request(
        request_id,
        num_prompt_tokens=num_prompt_tokens,
        num_output_tokens=8,
        arrival_time_s=0.0,
        prediction=LengthDistribution(8.0),
    )


def _victim(request_id, num_kv_tokens=16, recompute_s=10.0, wait_s=5.0):
    return EvictedKv(_request(request_id, num_kv_tokens), [0], num_kv_tokens, recompute_s, wait_s)


def _restore(handler, request_id):
    handler.restore([KvRestore(request_id, [0], 16)])
    return handler.take_step_stall_s()


def test_codec_sizes_of_llama3_8b_blocks():
    model = PRESETS["llama3-8b-h100"].model
    layout = KvLayout(model.num_layers, model.num_kv_heads, model.head_dim, BLOCK_SIZE_TOKENS)
    assert layout.block_bytes(KvCodec.FULL) == 2 * 2**20  # 32 layers x K,V x 8 heads x 128 x 16 x 2 bytes
    assert layout.block_bytes(KvCodec.INT8) == 2**20 + 4 * 2 * 32 * 8  # + a float32 scale per (layer, K/V, head)
    assert layout.block_bytes(KvCodec.INT4) == 2**19 + 8 * 2**20 // 32  # + scale and minimum per 32 dims
    full, int8 = codec_costs(layout, CodecTimes(25e9, 2.68e12), 17, (KvCodec.INT8, KvCodec.FULL))
    assert (full.codec, int8.codec) == (KvCodec.FULL, KvCodec.INT8)  # most precise first
    assert full.size_bytes == 2 * layout.block_bytes(KvCodec.FULL)  # 17 tokens take 2 whole blocks
    assert full.swap_out_s == pytest.approx(full.size_bytes / 25e9)
    assert int8.swap_in_s == pytest.approx(int8.size_bytes / 25e9 + (full.size_bytes + int8.size_bytes) / 2.68e12)


def test_swap_out_stalls_the_evicting_step_once():
    handler, _ = _handler()
    assert handler.evict([_victim("a", num_kv_tokens=32)]) == {"a"}
    assert handler.take_step_stall_s() == pytest.approx(2 * BLOCK_S)
    assert handler.take_step_stall_s() == 0.0
    assert handler.counters.num_swaps_by_codec["full"] == 1
    assert handler.counters.swap_out_bytes == 2 * 2048
    assert handler.num_free_slots == handler.num_total_slots - 2


def test_the_plan_call_is_charged_once_per_eviction_event():
    config = KvOffloadConfig(OffloadMode.SWAP, TINY, TINY_TIMES, 64 * 2048, 2048, 0.1, plan_latency_s=0.25)
    handler = SimKvOffload(config, Clock())
    handler.evict([_victim("a"), _victim("b", recompute_s=0.1)])  # b recomputes
    assert handler.take_step_stall_s() == pytest.approx(0.25 + BLOCK_S)
    assert handler.counters.num_plans == 1 and handler.counters.num_recompute_decisions == 1


def test_a_swap_in_prefetched_long_enough_before_the_restore_is_hidden():
    handler, clock = _handler()
    handler.evict([_victim("a")])  # written at t = 1
    handler.take_step_stall_s()
    clock.now_s = 1.0
    handler.prefetch([_request("a")])  # ready at 2
    clock.now_s = 2.5
    assert _restore(handler, "a") == 0.0
    assert handler.counters.num_restores_hidden == 1
    assert handler.counters.swap_in_bytes == 2048
    assert handler.num_free_slots == handler.num_total_slots


def test_a_restore_soon_after_its_prefetch_stalls_for_the_remainder_only():
    handler, clock = _handler()
    handler.evict([_victim("a")])
    handler.take_step_stall_s()
    clock.now_s = 1.0
    handler.prefetch([_request("a")])
    handler.prefetch([_request("a")])  # naming it again does not restart it
    clock.now_s = 1.25
    assert _restore(handler, "a") == pytest.approx(0.75)
    assert handler.counters.num_restores_hidden == 0


def test_a_restore_never_prefetched_stalls_for_the_whole_swap_in():
    handler, clock = _handler()
    handler.evict([_victim("a")])
    clock.now_s = 3.0
    handler.take_step_stall_s()
    assert _restore(handler, "a") == pytest.approx(BLOCK_S)
    assert handler.counters.num_restores_not_prefetched == 1


def test_without_prefetch_every_restore_stalls_for_its_whole_swap_in():
    handler, clock = _handler(prefetch=False)
    handler.evict([_victim("a")])
    handler.take_step_stall_s()
    handler.prefetch([_request("a")])
    clock.now_s = 10.0
    assert _restore(handler, "a") == pytest.approx(BLOCK_S)
    assert handler.counters.num_restores_not_prefetched == 1 and handler.counters.peak_prefetched_bytes == 0


def test_prefetches_queue_on_the_host_to_device_link():
    handler, clock = _handler()
    handler.evict([_victim("a"), _victim("b")])  # written at 1 and 2
    handler.take_step_stall_s()
    clock.now_s = 5.0
    handler.prefetch([_request("a"), _request("b")])  # a ready at 6, b at 7
    assert _restore(handler, "b") == pytest.approx(2.0)


def test_full_host_tier_sends_a_longer_waiting_victim_to_recompute():
    handler, _ = _handler(host_blocks=1)
    assert handler.evict([_victim("a", wait_s=5.0)]) == {"a"}
    assert handler.evict([_victim("b", wait_s=10.0)]) == set()  # a resumes sooner: it keeps its slot
    assert handler.counters.num_recompute_decisions == 1
    assert handler.ensure_restorable(_request("a"))


def test_full_host_tier_drops_a_longer_waiting_swapped_request_and_it_recomputes():
    handler, _ = _handler(host_blocks=1)
    handler.evict([_victim("a", wait_s=5.0)])
    assert handler.evict([_victim("c", wait_s=1.0)]) == {"c"}  # c resumes first: a's slot goes to c
    assert handler.counters.num_dropped == 1
    assert not handler.ensure_restorable(_request("a"))  # the scheduler recomputes a
    assert handler.ensure_restorable(_request("c"))
    assert handler.check_invariants() == []


def test_a_request_whose_swap_in_is_in_flight_is_not_dropped_until_it_arrived():
    handler, clock = _handler(host_blocks=1)
    handler.evict([_victim("a", wait_s=5.0)])  # written at 1
    handler.prefetch([_request("a")])  # in flight until 2
    assert handler.evict([_victim("c", wait_s=1.0)]) == set()
    assert handler.ensure_restorable(_request("a"))
    clock.now_s = 2.0
    assert handler.evict([_victim("d", wait_s=1.0)]) == {"d"}
    assert not handler.ensure_restorable(_request("a"))
    assert handler.check_invariants() == []


def test_preemption_cost_is_the_cheapest_allowed_round_trip_or_recompute():
    handler, _ = _handler(OffloadMode.SWAP_COMPRESS, host_blocks=1)
    # 16 tokens: full 2048 bytes = 1 s each way; int4 768 bytes = 0.375 s each way (+ ~0 dequantize)
    assert handler.preemption_cost_s(16, 1, recompute_s=10.0) == pytest.approx(2 * 768 / 2048, rel=1e-6)
    assert handler.preemption_cost_s(16, 1, recompute_s=0.1) == 0.1
    assert handler.preemption_cost_s(64, 4, recompute_s=10.0) == 10.0  # no codec fits a 1-block tier
    full_only, _ = _handler(OffloadMode.SWAP, host_blocks=4)
    assert full_only.preemption_cost_s(16, 1, recompute_s=10.0) == pytest.approx(2 * BLOCK_S)


def test_discard_frees_the_host_slots():
    handler, _ = _handler()
    handler.evict([_victim("a", num_kv_tokens=40)])
    handler.prefetch([_request("a")])
    assert handler.num_free_slots == handler.num_total_slots - 3
    handler.discard("a")
    assert handler.num_free_slots == handler.num_total_slots and not handler.entries
    assert handler.check_invariants() == []
    assert not handler.ensure_restorable(_request("a"))


@pytest.mark.parametrize(
    ("mode", "budget", "num_kv_tokens", "host_blocks", "codec"),
    [
        # 48 tokens = 3 blocks: full 3 x 2048 bytes (3 slots), int8 3 x 1032 (2 slots), int4 3 x 768 (2 slots)
        (OffloadMode.SWAP, 0.1, 48, 2, None),  # full does not fit; swap offers nothing else
        (OffloadMode.SWAP_COMPRESS, 0.1, 48, 2, "int8"),  # the most precise codec that fits
        (OffloadMode.SWAP_COMPRESS, 0.001, 48, 2, None),  # both lossy codecs over the error budget
        # 32 tokens = 2 blocks: int8 2 x 1032 (2 slots), int4 2 x 768 (1 slot)
        (OffloadMode.SWAP_COMPRESS, 0.1, 32, 1, "int4"),  # only int4 fits
        (OffloadMode.SWAP_COMPRESS, 0.05, 32, 1, None),  # ... and it is over this budget
    ],
)
def test_compression_is_used_where_full_precision_does_not_fit_and_the_budget_allows(
    mode, budget, num_kv_tokens, host_blocks, codec
):
    handler, _ = _handler(mode, host_blocks=host_blocks, budget=budget)
    saved = handler.evict([_victim("a", num_kv_tokens=num_kv_tokens)])
    assert saved == (set() if codec is None else {"a"})
    if codec is not None:
        assert handler.counters.num_swaps_by_codec[codec] == 1


# -- whole simulated runs ------------------------------------------------------------------------

COST = PRESETS["llama2-13b-a100-40g"]  # a small KV pool: preemption happens under load
LAYOUT_13B = KvLayout(COST.model.num_layers, COST.model.num_kv_heads, COST.model.head_dim, BLOCK_SIZE_TOKENS)


def _offload(mode, host_gb=64.0):
    block_bytes = LAYOUT_13B.block_bytes(KvCodec.FULL)
    return KvOffloadConfig(mode, LAYOUT_13B, CodecTimes(25e9, 1.2e12), int(host_gb * 1e9), block_bytes, 0.1)


def _trace(num_requests, seed=0):
    rng = np.random.default_rng(seed)
    prompts = rng.integers(8, 400, num_requests)
    outputs = np.clip(rng.lognormal(np.log(120), 1.0, num_requests), 4, 1200).astype(int)
    return [TraceRequest(f"r{i}", None, int(p), int(o)) for i, (p, o) in enumerate(zip(prompts, outputs))]


def _run(policy, offload, trace, rate=4.0, seed=0):
    predictions, _ = noisy_oracle_distributions([t.num_output_tokens for t in trace], target_tau=0.6, seed=seed)
    arrivals = arrival_times_s(len(trace), rate, seed=seed)
    return simulate(trace, arrivals, predictions, policy=policy, cost=COST, shape=EngineShape(), offload=offload)


@pytest.mark.parametrize("policy", ["fcfs", "alise"])
def test_under_memory_pressure_swap_compress_recomputes_fewer_tokens(policy):
    trace = _trace(100)
    recompute = _run(policy, None, trace)
    swapped = _run(policy, _offload(OffloadMode.SWAP_COMPRESS), trace)
    assert recompute.num_preemptions > 0 and recompute.num_recomputed_tokens > 0
    assert swapped.num_recomputed_tokens < recompute.num_recomputed_tokens
    assert swapped.kv_swap_bytes > 0 and swapped.kv_swap_bytes == swapped.offload.swap_out_bytes
    assert sum(swapped.offload.num_swaps_by_codec.values()) > 0
    assert sorted(r.request_id for r in swapped.records) == sorted(t.request_id for t in trace)


def test_host_tier_stays_consistent_at_every_step_and_dropped_requests_recompute(monkeypatch):
    seen = []

    class Checked(SimKvOffload):
        def take_step_stall_s(self):
            assert self.check_invariants() == []
            seen.append(self)
            return super().take_step_stall_s()

    monkeypatch.setattr(simulator, "make_handler", lambda config, clock: Checked(config, clock))
    trace = _trace(100)
    result = _run("alise", _offload(OffloadMode.SWAP_COMPRESS, host_gb=0.25), trace)
    handler = seen[-1]
    counters = handler.counters
    assert len(seen) == result.num_steps
    assert counters.num_dropped > 0 and counters.num_recompute_decisions > 0  # the small tier was full
    assert counters.num_restores == sum(counters.num_swaps_by_codec.values()) - counters.num_dropped
    assert counters.swap_in_bytes <= counters.swap_out_bytes
    assert not handler.entries and handler.num_free_slots == handler.num_total_slots  # nothing leaked
    assert not handler._dropped  # every dropped request was told to recompute
    lengths = {t.request_id: t.num_output_tokens for t in trace}
    assert {r.request_id: r.num_output_tokens for r in result.records} == lengths


def test_the_same_seed_gives_the_same_offloaded_run():
    trace = _trace(60)
    first = _run("alise", _offload(OffloadMode.SWAP_COMPRESS, host_gb=1.0), trace)
    second = _run("alise", _offload(OffloadMode.SWAP_COMPRESS, host_gb=1.0), trace)
    assert first.records == second.records
    assert first.offload == second.offload and first.num_steps == second.num_steps


def test_sweep_compares_offload_modes_side_by_side_in_one_json():
    trace = _trace(30)
    predictions, _ = noisy_oracle_distributions([t.num_output_tokens for t in trace], target_tau=0.6, seed=0)
    config = SweepConfig(
        ("fcfs", "alise"),
        (0.2, 5.0),
        1.0,
        (4.0,),
        4.0,
        0,
        ("recompute", "swap-compress"),
        _offload(OffloadMode.SWAP_COMPRESS),
    )
    result = run_sweep(trace, predictions, cost=COST, shape=EngineShape(), config=config, progress=lambda _: None)
    labels = {point.label for point in result.points}
    assert labels == {"fcfs+recompute", "fcfs+swap-compress", "alise+recompute", "alise+swap-compress"}
    bound = result.bounds[0]
    assert set(bound.ratio_to_recompute) == {"fcfs+swap-compress", "alise+swap-compress"}
    assert bound.ratio_to_fcfs["fcfs+swap-compress"] == 1.0
    report = json.loads(json.dumps(build_report("simulator", {"sweep": config}, {"result": result})))
    assert report["config"]["sweep"]["offload"]["mode"] == "swap-compress"


def test_swap_modes_without_host_tier_settings_are_refused():
    with pytest.raises(ValueError, match="host tier"):
        SweepConfig(("fcfs",), (), 1.0, (2.0,), 4.0, 0, ("recompute", "swap"), None)
    with pytest.raises(ValueError):
        SweepConfig(("fcfs",), (), 1.0, (2.0,), 4.0, 0, ("recompute", "bogus"), None)


def test_cli_rejects_an_unknown_offload_mode(capsys):
    parser = argparse.ArgumentParser()
    sim_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["sim", "--kv-offload", "recompute,teleport"])
    assert args.handler(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("alise bench sim: error: unknown KV offload modes ['teleport']")
    assert captured.out == ""  # errors go to stderr (services/common/cli_errors.py)
