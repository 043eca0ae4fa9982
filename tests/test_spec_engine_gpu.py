"""Speculative decoding on CUDA (GPU only): verify queries of k + 1 tokens go through our varlen kernel,
early-exit drafts through the same decoder, decode-only steps through CUDA graphs; greedy output is
identical to decoding without drafts (float32 weights, so kernel rounding cannot flip an argmax)."""

import pytest
import torch

from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine.block_pool import KvBlockManager
from services.engine.engine_core import EngineCore
from services.engine.kernels.backend import AttentionBackendKind
from services.engine.model_loader import load_model
from services.engine.model_runner import ModelRunner
from services.engine.scheduler import OnlineStepCostModel, Scheduler, SchedulerLimits, make_policy
from services.engine.spec.engine_setup import make_speculator
from services.engine.spec.method import SpeculativeMethod
from services.engine.spec.spec_config import SpeculativeConfig
from tests.engine_model import greedy, new_request, run_to_completion

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _outputs(spec: SpeculativeConfig) -> tuple[dict[str, list[int]], EngineCore]:
    loaded = load_model(DUMMY_TINY_MODEL, dtype=torch.float32, device=torch.device("cuda"), seed=0)
    kv = KvBlockManager(256, 16)
    cost_model = OnlineStepCostModel()
    scheduler = Scheduler(make_policy("fcfs", cost_model), SchedulerLimits(8, 64, 2048), kv, loaded.eos_token_id)
    runner = ModelRunner(loaded.model, kv, 256)
    speculator = make_speculator(spec, cost_model, 2048, runner, loaded.model, DUMMY_TINY_MODEL)
    core = EngineCore(scheduler, runner, speculator=speculator)
    motif = list(range(200, 211))
    prompts = [motif * 4, list(range(300, 337)), motif * 2 + [5, 6, 7]]
    arrivals = {0: [new_request(f"r{i}", p, greedy(48)) for i, p in enumerate(prompts)]}
    return run_to_completion(core, arrivals), core


@pytest.mark.parametrize(
    "spec",
    [
        SpeculativeConfig(SpeculativeMethod.NGRAM, 4),
        SpeculativeConfig(SpeculativeMethod.EARLY_EXIT, 3, early_exit_layer=4),
    ],
    ids=["ngram", "early-exit"],
)
def test_greedy_speculation_on_cuda_is_identical(spec):
    plain, _ = _outputs(SpeculativeConfig())
    outputs, core = _outputs(spec)
    assert core.runner.attention.kind is AttentionBackendKind.CUDA
    assert outputs == plain
    assert core.speculator.stats.num_accepted_tokens > 0
    assert core.scheduler.kv.pool.num_free_blocks == 256
