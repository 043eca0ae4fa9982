"""The engine on CUDA picks the kernels, and its steps match the torch reference backend (GPU only).

Each scheduled step (prefill chunks, mixed chunk + decode steps, pure decode steps) is run
through the model twice on the same cache state: once with the CUDA backend, once with the
reference. Rewriting the same keys to the same slots is idempotent, so both see equal caches.
"""

import pytest
import torch

from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine.block_pool import KvBlockManager
from services.engine.engine_core import EngineCore
from services.engine.kernels.backend import AttentionBackendKind, ReferenceAttention
from services.engine.model_loader import load_model
from services.engine.model_runner import ModelRunner
from services.engine.scheduler import Scheduler, SchedulerLimits, make_policy
from tests.engine_model import greedy, new_request
from tests.kernel_cases import run_steps_comparing_backends

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _core(dtype: torch.dtype) -> EngineCore:
    loaded = load_model(DUMMY_TINY_MODEL, dtype=dtype, device=torch.device("cuda"), seed=0)
    kv = KvBlockManager(256, 16)
    scheduler = Scheduler(make_policy("fcfs"), SchedulerLimits(8, 48, 2048), kv, loaded.eos_token_id)
    return EngineCore(scheduler, ModelRunner(loaded.model, kv, 256))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_backend_steps_match_the_reference(dtype):
    core = _core(dtype)
    assert core.runner.attention.kind is AttentionBackendKind.CUDA
    for index, length in enumerate((70, 5, 33, 1)):
        prompt = torch.randint(3, 32000, (length,), generator=torch.Generator().manual_seed(index)).tolist()
        core.add(new_request(f"r{index}", prompt, greedy(12)))
    kinds = run_steps_comparing_backends(core, core.runner.attention, ReferenceAttention(), threshold=2e-2)
    assert {(False,), (False, True), (True,)} <= kinds  # prefill-only, mixed, decode-only steps
