"""Speculative decoding on CUDA (GPU only). float32 (the torch reference attention on the GPU): greedy
output identical to decoding without drafts. bfloat16: verify queries of k + 1 tokens go through our
varlen kernel and decode-only steps through CUDA graphs; a (k+1)-row GEMM may round differently from
a 1-row one, which can flip a near-tie of the flat random model, so there only completion, acceptance
and the freed pool are checked."""

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


def _outputs(spec: SpeculativeConfig, dtype: torch.dtype) -> tuple[dict[str, list[int]], EngineCore]:
    loaded = load_model(DUMMY_TINY_MODEL, dtype=dtype, device=torch.device("cuda"), seed=0)
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
def test_greedy_speculation_on_cuda_is_identical_in_float32(spec):
    plain, _ = _outputs(SpeculativeConfig(), torch.float32)
    outputs, core = _outputs(spec, torch.float32)
    assert outputs == plain
    assert core.speculator.stats.num_accepted_tokens > 0
    assert core.scheduler.kv.pool.num_free_blocks == 256


@pytest.mark.parametrize(
    "spec",
    [
        SpeculativeConfig(SpeculativeMethod.NGRAM, 4),
        SpeculativeConfig(SpeculativeMethod.EARLY_EXIT, 3, early_exit_layer=4),
    ],
    ids=["ngram", "early-exit"],
)
def test_speculation_runs_through_the_cuda_kernel_in_bfloat16(spec):
    outputs, core = _outputs(spec, torch.bfloat16)
    assert core.runner.attention.kind is AttentionBackendKind.CUDA
    assert core.runner.graphs is not None  # decode-only steps replay graphs; verify steps run eagerly
    assert all(len(tokens) == 48 for tokens in outputs.values())
    assert core.speculator.stats.num_accepted_tokens > 0
    assert core.scheduler.kv.pool.num_free_blocks == 256
