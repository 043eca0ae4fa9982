"""Workload traces: vLLM's ShareGPT filter, determinism, unique ids, the data-dir rules, scaling."""

import pathlib

import pytest

from services.bench import workload
from services.bench.workload import TRACE_NAMES, TraceRequest, load_trace, scale_trace
from tests.shared_data import SHARED_DATA_DIR, requires_shared_data


@requires_shared_data
@pytest.mark.parametrize("name", TRACE_NAMES)
def test_trace_is_deterministic_for_a_seed_and_differs_across_seeds(name):
    first = load_trace(name, num_requests=300, seed=7, data_dir=SHARED_DATA_DIR)
    again = load_trace(name, num_requests=300, seed=7, data_dir=SHARED_DATA_DIR)
    other = load_trace(name, num_requests=300, seed=8, data_dir=SHARED_DATA_DIR)
    assert first == again
    assert [r.request_id for r in first] != [r.request_id for r in other]
    assert len(first) == 300 and len({r.request_id for r in first}) == 300


@requires_shared_data
def test_sharegpt_applies_vllm_filter_and_a_smaller_context():
    trace = load_trace("sharegpt", num_requests=2000, seed=0, data_dir=SHARED_DATA_DIR)
    for request in trace:
        assert request.num_prompt_tokens >= 4 and request.num_output_tokens >= 4
        assert request.num_prompt_tokens <= 1024
        assert request.num_prompt_tokens + request.num_output_tokens <= 2048
        assert request.prompt_text
    mean_output = sum(r.num_output_tokens for r in trace) / len(trace)
    assert 280 < mean_output < 380  # the data README: 327 after this filter
    short = load_trace("sharegpt", num_requests=500, seed=0, data_dir=SHARED_DATA_DIR, max_model_len=512)
    assert max(r.num_prompt_tokens + r.num_output_tokens for r in short) <= 512


@requires_shared_data
def test_alpaca_resamples_with_replacement_and_keeps_ids_unique():
    trace = load_trace("alpaca", num_requests=3000, seed=1, data_dir=SHARED_DATA_DIR)  # 662 davinci rows
    ids = [r.request_id for r in trace]
    assert len(set(ids)) == 3000
    assert any("-r" in request_id for request_id in ids)
    assert all(r.prompt_text and r.num_output_tokens >= 1 for r in trace)
    mean_output = sum(r.num_output_tokens for r in trace) / len(trace)
    assert 60 < mean_output < 110  # the data README: davinci answers average 82 tokens


@requires_shared_data
def test_alpaca_lengths_has_no_text_and_alpaca_shaped_lengths():
    trace = load_trace("alpaca-lengths", num_requests=1000, seed=2, data_dir=SHARED_DATA_DIR)
    assert all(r.prompt_text is None and r.num_prompt_tokens >= 1 for r in trace)
    mean_output = sum(r.num_output_tokens for r in trace) / len(trace)
    assert 50 < mean_output < 85  # L_gt mean is 65.5


def test_unknown_trace_and_bad_sizes_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown trace 'nope'"):
        load_trace("nope", num_requests=1, seed=0, data_dir=tmp_path)
    with pytest.raises(ValueError, match="num_requests"):
        load_trace("sharegpt", num_requests=0, seed=0, data_dir=tmp_path)


def test_missing_data_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="sharegpt_v3_first_turn.dev.jsonl.gz"):
        load_trace("sharegpt", num_requests=1, seed=0, data_dir=tmp_path)


def test_env_var_overrides_the_default_dir_at_call_time(tmp_path, monkeypatch):
    monkeypatch.setenv(workload.DATA_DIR_ENV, str(tmp_path))
    assert workload.resolve_data_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_trace("alpaca", num_requests=1, seed=0)
    monkeypatch.delenv(workload.DATA_DIR_ENV)
    assert workload.resolve_data_dir() == workload.DEFAULT_DATA_DIR
    assert workload.resolve_data_dir(pathlib.Path("/x")) == pathlib.Path("/x")


def test_default_dir_is_the_shared_data_next_to_the_repo():
    assert workload.DEFAULT_DATA_DIR == SHARED_DATA_DIR


def test_scale_trace_divides_clips_and_keeps_the_order():
    trace = [
        TraceRequest(f"r{i}", "text", prompt, output)
        for i, (prompt, output) in enumerate([(1, 1), (7, 8), (9, 800), (1500, 17), (40, 2000)])
    ]
    scaled = scale_trace(trace, divisor=8, max_prompt_tokens=64, max_output_tokens=128)
    assert [(r.num_prompt_tokens, r.num_output_tokens) for r in scaled] == [(1, 1), (1, 1), (2, 100), (64, 3), (5, 128)]
    assert [r.request_id for r in scaled] == [r.request_id for r in trace]
    outputs = [r.num_output_tokens for r in trace]
    scaled_outputs = [r.num_output_tokens for r in scaled]
    for i in range(len(trace)):
        for j in range(len(trace)):
            if outputs[i] < outputs[j]:
                assert scaled_outputs[i] <= scaled_outputs[j]
    with pytest.raises(ValueError, match="divisor"):
        scale_trace(trace, divisor=0.5, max_prompt_tokens=1, max_output_tokens=1)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        scale_trace(trace, divisor=2, max_prompt_tokens=0, max_output_tokens=1)
