"""CUDA graphs of decode-only steps give exactly the eager outputs (GPU only).

Each decode step is run twice on the same cache state, replayed from the padded graph and eagerly
(rewriting the same keys to the same slots is idempotent): the hidden states must be identical.
Whole generations with graphs and with --enforce-eager must give the same tokens.
"""

import pytest
import torch

from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine.block_pool import KvBlockManager
from services.engine.cuda_graphs import capture_sizes
from services.engine.engine_core import EngineCore
from services.engine.model_loader import load_model
from services.engine.model_runner import ModelRunner
from services.engine.scheduler import Scheduler, SchedulerLimits, make_policy
from tests.engine_model import greedy, new_request, run_to_completion

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MAX_NUM_SEQS = 8


def _core(dtype: torch.dtype, *, enforce_eager: bool) -> EngineCore:
    loaded = load_model(DUMMY_TINY_MODEL, dtype=dtype, device=torch.device("cuda"), seed=0)
    kv = KvBlockManager(256, 16)
    scheduler = Scheduler(make_policy("fcfs"), SchedulerLimits(MAX_NUM_SEQS, 64, 2048), kv, loaded.eos_token_id)
    runner = ModelRunner(
        loaded.model, kv, 256, enforce_eager=enforce_eager, max_num_seqs=MAX_NUM_SEQS, max_model_len=2048
    )
    return EngineCore(scheduler, runner)


def _arrivals():
    prompts = [[5 + i] * (3 + 7 * i) for i in range(6)]
    return {step: [new_request(f"r{i}", prompts[i], greedy(20))] for i, step in enumerate((0, 0, 1, 4, 9, 9))}


def test_capture_sizes_pad_up_to_max_num_seqs():
    assert capture_sizes(8) == [1, 2, 4, 8] and capture_sizes(20) == [1, 2, 4, 8, 16, 20]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_replayed_decode_steps_equal_eager_steps(dtype):
    core = _core(dtype, enforce_eager=False)
    runner = core.runner
    assert runner.graphs is not None
    for _, requests in sorted(_arrivals().items()):
        for request in requests:
            core.add(request)
    num_compared = 0
    with torch.inference_mode():
        while core.scheduler.has_work:
            output = core.scheduler.schedule()
            arrays = runner.prepare_arrays(output)
            replayed = runner.graphs.run(arrays)
            if replayed is not None:
                replayed = replayed.clone()
                eager = runner.forward(arrays.input_ids, arrays.positions, runner.metadata_of(arrays))
                assert torch.equal(replayed, eager), f"{len(arrays.seq_lens_host)} decodes"
                num_compared += 1
            core.scheduler.update(output, runner.execute(output))
    assert num_compared > 5 and runner.graphs.num_replays >= num_compared


def test_generations_with_graphs_equal_enforce_eager():
    with_graphs = _core(torch.bfloat16, enforce_eager=False)
    eager = _core(torch.bfloat16, enforce_eager=True)
    assert eager.runner.graphs is None
    assert run_to_completion(with_graphs, _arrivals()) == run_to_completion(eager, _arrivals())
    assert with_graphs.runner.graphs.num_replays > 0
