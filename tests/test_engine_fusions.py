"""The fused decoder equals the unfused Hugging Face modules, and issues at most 12 operators per layer.

fp32: the fused qkv / gate-up GEMMs, the table RoPE and the residual adds inside addmm give the
same hidden states as the Hugging Face forward within float rounding (and RoPE bit for bit); bf16
within bf16 tolerance. On CPU the CUDA-graph path is never built or taken.
"""

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from services.bench.step_ops import AttentionProbe, OperatorCounter
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine.block_pool import KvBlockManager
from services.engine.fused_llama import RopeTable, apply_rope
from services.engine.model_loader import load_model
from services.engine.model_runner import ModelRunner
from services.engine.request import Request, SamplingOptions
from services.engine.scheduler.output import ScheduledChunk, SchedulerOutput

CPU = torch.device("cpu")


def _runner(dtype: torch.dtype, num_blocks: int = 32, block_size: int = 8) -> ModelRunner:
    torch.set_num_threads(1)
    loaded = load_model(DUMMY_TINY_MODEL, dtype=dtype, device=CPU, seed=0)
    kv = KvBlockManager(num_blocks, block_size)
    return ModelRunner(loaded.model, kv, num_blocks)


def _prefill_hidden(runner: ModelRunner, prompt: list[int]) -> torch.Tensor:
    """The fused forward of one whole prompt through the paged cache: [len(prompt), hidden]."""
    options = SamplingOptions(max_tokens=1, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=True)
    request = Request("p", prompt, options, 0.0, 1.0)
    assert runner.kv.allocate_slots("p", len(prompt))
    step = SchedulerOutput([ScheduledChunk(request, len(prompt), True, len(prompt))])
    with torch.inference_mode():
        return runner._forward(*runner._prepare(step))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_fused_forward_equals_the_hugging_face_forward(dtype, tolerance):
    runner = _runner(dtype)
    prompt = torch.randint(3, 32000, (37,), generator=torch.Generator().manual_seed(0)).tolist()
    fused = _prefill_hidden(runner, prompt).float()
    with torch.inference_mode():
        reference = runner.model.model(torch.tensor([prompt])).last_hidden_state[0].float()
    error = (fused - reference).norm() / reference.norm()
    assert error < tolerance, f"relative error {error:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_table_rope_is_bit_exact_with_hugging_face(dtype):
    runner = _runner(torch.float32)
    rotary = runner.model.model.rotary_emb
    heads, head_dim = 6, runner.head_dim
    positions = torch.tensor([0, 1, 5, 17, 300, 2047])
    query = torch.randn(len(positions), heads, head_dim).to(dtype)
    key = torch.randn(len(positions), 2, head_dim).to(dtype)
    cos, sin = rotary(query[None], positions[None])
    expected_q, expected_k = apply_rotary_pos_emb(query.transpose(0, 1)[None], key.transpose(0, 1)[None], cos, sin)
    table = RopeTable(rotary, head_dim, dtype, CPU)
    both = apply_rope(torch.cat([query, key], dim=1), table.rows(positions))
    assert torch.equal(both[:, :heads], expected_q[0].transpose(0, 1))
    assert torch.equal(both[:, heads:], expected_k[0].transpose(0, 1))


def test_rope_table_grows_past_its_first_size():
    runner = _runner(torch.float32)
    table = runner.decoder.rope
    first = table.table.shape[0]
    table.ensure(first + 1)
    assert table.table.shape[0] == 2 * first
    cos, sin = runner.model.model.rotary_emb(torch.empty(1, 1, runner.head_dim), torch.tensor([[first]]))
    half = runner.head_dim // 2
    assert torch.equal(table.table[first, 0, 0, 0], cos[0, 0, :half])
    assert torch.equal(table.table[first, 0, 1, 0], sin[0, 0, :half])


def test_projections_are_fused_once_and_the_modules_read_views_of_them():
    runner = _runner(torch.float32)
    layer, attn = runner.decoder.layers[0], runner.model.model.layers[0].self_attn
    fused_bytes = layer.qkv_weight.untyped_storage().data_ptr()
    for module in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert module.weight.untyped_storage().data_ptr() == fused_bytes  # no second copy of the weights
    mlp = runner.model.model.layers[0].mlp
    assert mlp.gate_proj.weight.untyped_storage().data_ptr() == layer.gate_up_weight.untyped_storage().data_ptr()
    heads, kv_heads = runner.num_heads, runner.num_kv_heads
    assert layer.qkv_weight.shape[0] == (heads + 2 * kv_heads) * runner.head_dim


def test_a_decode_step_issues_at_most_12_operators_per_layer():
    runner = _runner(torch.float32)
    _prefill_hidden(runner, list(range(3, 20)))
    options = SamplingOptions(max_tokens=4, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=True)
    request = Request("p", list(range(3, 20)) + [7], options, 0.0, 1.0)  # shares the prefill's blocks
    request.num_computed_tokens = 17
    step = SchedulerOutput([ScheduledChunk(request, 1, True, 18)])
    with torch.inference_mode():
        inputs = runner._prepare(step)
        counter = OperatorCounter()
        runner.attention = AttentionProbe(runner.attention, counter)  # its operators counted apart
        with counter:
            runner._forward(*inputs)
    num_layers = len(runner.decoder.layers)
    per_step = 3  # embedding, RoPE rows gathered once, final norm
    # + the cache write and attend: one kernel launch each on CUDA
    per_layer = (counter.count("decoder") - per_step) / num_layers + 2
    assert per_layer <= 12, counter.by_operator("decoder")
    assert counter.count("attention") > 0  # the probe did see the backend's calls


def test_the_cuda_graph_path_is_never_built_on_cpu():
    runner = _runner(torch.float32)
    assert runner.graphs is None
    assert ModelRunner(runner.model, KvBlockManager(8, 8), 8, enforce_eager=False).graphs is None


def test_decode_graph_sizes_pad_up_and_only_decode_only_steps_qualify():
    from services.engine.cuda_graphs import DecodeGraphs
    from services.engine.input_batch import InputBatch

    runner = _runner(torch.float32)
    graphs = DecodeGraphs(runner, max_num_seqs=20, max_model_len=256)  # buffers only: capture needs CUDA
    assert graphs.sizes == [1, 2, 4, 8, 16, 20]
    batch = InputBatch(8, CPU)
    options = SamplingOptions(max_tokens=4, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=True)

    def arrays_of(num_decodes: int, prefill_tokens: int = 0, context: int = 9):
        requests = [Request(f"r{i}", list(range(3, 3 + context)), options, 0.0, 1.0) for i in range(num_decodes)]
        for request in requests:
            request.num_computed_tokens = context - 1
        chunks = [ScheduledChunk(r, 1, True, context) for r in requests]
        if prefill_tokens:
            prefill = Request("p", [5] * prefill_tokens, options, 0.0, 1.0)
            chunks.append(ScheduledChunk(prefill, prefill_tokens, True, prefill_tokens))
        return batch.prepare(chunks, lambda _: list(range(40)))

    assert graphs.size_for(arrays_of(1)) == 1 and graphs.size_for(arrays_of(3)) == 4
    assert graphs.size_for(arrays_of(17)) == 20
    assert graphs.size_for(arrays_of(21)) is None  # more decodes than captured
    assert graphs.size_for(arrays_of(2, prefill_tokens=5)) is None  # a mixed step runs eagerly
    assert graphs.size_for(arrays_of(2, context=257)) is None  # past max_model_len
