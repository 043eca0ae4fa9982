"""The engine's CUDA attention backend on CPU: the model runner drives the real kernel code
through the SIMT emulator, and every step matches the torch reference backend.

Covers what the kernel tests alone do not: the backend's decode-row selection and scatter in
mixed steps, the padded int32 block tables, prefill chunks through SDPA next to kernel decodes,
and the cache-write kernel fed the engine's own slot mapping. The tiny default model (head_dim 64,
GQA 4/2) runs in bfloat16 on CPU; only the kernels' execution is emulated.
"""

import pytest
import torch

from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine.block_pool import KvBlockManager
from services.engine.engine_core import EngineCore
from services.engine.kernels import ops
from services.engine.kernels.backend import CudaAttention, ReferenceAttention
from services.engine.model_loader import load_model
from services.engine.model_runner import ModelRunner
from services.engine.scheduler import Scheduler, SchedulerLimits, make_policy
from tests.engine_model import greedy, new_request
from tests.kernel_cases import run_steps_comparing_backends
from tests.kernel_sim_driver import HOST_COMPILER, EmulatedKernels, build_driver

pytestmark = pytest.mark.skipif(HOST_COMPILER is None, reason="no g++ to build the SIMT emulator")


def test_engine_steps_through_emulated_kernels_match_the_reference(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    kernels = EmulatedKernels(build_driver(tmp_path))
    monkeypatch.setattr(ops, "load_kernels", lambda: kernels)
    monkeypatch.setattr(ops, "_num_sms", lambda device_index: 132)
    loaded = load_model(DUMMY_TINY_MODEL, dtype=torch.bfloat16, device=torch.device("cpu"), seed=0)
    kv = KvBlockManager(64, 16)
    scheduler = Scheduler(make_policy("fcfs"), SchedulerLimits(8, 40, 2048), kv, loaded.eos_token_id)
    core = EngineCore(scheduler, ModelRunner(loaded.model, kv, 64))
    for index, length in enumerate((45, 5, 20, 1)):
        prompt = torch.randint(3, 32000, (length,), generator=torch.Generator().manual_seed(index)).tolist()
        core.add(new_request(f"r{index}", prompt, greedy(5)))
    kinds = run_steps_comparing_backends(core, CudaAttention(4, 2), ReferenceAttention(), threshold=2e-2)
    assert {(False,), (False, True), (True,)} <= kinds  # prefill-only, mixed, decode-only steps
    assert kernels.num_calls > 0
    assert core.scheduler.kv.pool.num_free_blocks == 64
