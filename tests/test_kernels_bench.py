"""`alise bench attention` without a GPU, its byte accounting and its report formatting (CPU)."""

import json

import pytest
import torch

from services.bench import attention_report, attention_sweep
from services.bench.attention import BenchAttentionConfig
from services.bench.attention_measure import DecodeShape
from services.cli.main import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_benchmark_says_why_and_exits_1(capsys, tmp_path):
    out = tmp_path / "attention.json"
    assert main(["bench", "attention", "--skip-e2e", "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "alise bench attention: error: needs a CUDA GPU" in error and "Traceback" not in error
    assert not out.exists()


def test_bad_flags_exit_2_before_touching_the_gpu(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["bench", "attention", "--batches", "0"])
    assert raised.value.code == 2 and "must be > 0" in capsys.readouterr().err


def _config(**overrides) -> BenchAttentionConfig:
    fields = dict(
        batches=(1, 8, 32, 64, 128, 256),
        context_lens=(128, 256, 512, 1024, 2048, 4096, 8192),
        layouts=("gqa8", "mha"),
        kv_dtypes=("bf16", "int8"),
        num_heads=32,
        head_dim=128,
        block_size=16,
        num_warmup=1,
        num_iters=3,
        baselines=True,
        e2e=False,
        e2e_batches=(64, 256),
        e2e_context_len=1024,
        e2e_output_tokens=128,
        seed=0,
    )
    return BenchAttentionConfig(**{**fields, **overrides})


def test_default_sweep_has_every_point_of_the_issue():
    points = attention_sweep.shapes(_config())
    assert len(points) == 6 * 7 * 2 * 2
    assert {(p.num_kv_heads, p.int8_kv) for p in points} == {(8, False), (8, True), (32, False), (32, True)}
    with pytest.raises(ValueError, match="unknown"):
        _config(layouts=("gqa3",))


def test_minimum_bytes_counts_kv_scales_query_and_output():
    bf16 = DecodeShape(
        batch=2, context_len=20, num_heads=32, num_kv_heads=8, head_dim=128, block_size=16, int8_kv=False
    )
    assert bf16.minimum_bytes() == 2 * 2 * 20 * 8 * 128 * 2 + 2 * 2 * 32 * 128 * 2
    int8 = DecodeShape(batch=2, context_len=20, num_heads=32, num_kv_heads=8, head_dim=128, block_size=16, int8_kv=True)
    assert int8.minimum_bytes() == 2 * 2 * 20 * 8 * 128 + 2 * 2 * 2 * 8 * 4 + 2 * 2 * 32 * 128 * 2
    assert bf16.dense_kv_bytes() == 2 * 2 * 20 * 8 * 128 * 2


def test_report_formats_rows_skips_and_plot(tmp_path):
    rows = [
        {
            "layout": "gqa8",
            "kv_dtype": "bf16",
            "batch": 32,
            "context_len": 2048,
            "num_splits": 1,
            "kernel_us": 100.0,
            "achieved_gb_per_s": 2700.0,
            "share_of_copy_bandwidth": 0.9,
            "sdpa_dense_us": 150.0,
            "sdpa_gather_us": 400.0,
            "relative_error_vs_sdpa_fp32": 2e-3,
        },
        {
            "layout": "gqa8",
            "kv_dtype": "int8",
            "batch": 32,
            "context_len": 2048,
            "num_splits": 1,
            "kernel_us": 55.0,
            "achieved_gb_per_s": 2500.0,
            "share_of_copy_bandwidth": 0.83,
            "relative_error_vs_sdpa_fp32": 4e-3,
        },
        {"layout": "mha", "kv_dtype": "bf16", "batch": 256, "context_len": 8192, "skipped": "out of GPU memory"},
    ]
    attention_sweep._cite_bf16_baselines(rows)
    assert rows[0]["speedup_vs_sdpa_gather"] == 4.0 and rows[1]["speedup_vs_sdpa_gather"] == pytest.approx(400 / 55)
    report = {"gpu": {"name": "Test GPU"}, "torch": "x", "cuda": "y", "copy_bandwidth_gb_per_s": 3000.0, "rows": rows}
    table = attention_report.format_table(report)
    assert "Test GPU" in table and "3000 GB/s" in table and "skipped: out of GPU memory" in table
    assert " 90.0 " in table.splitlines()[2] and "4.00" in table.splitlines()[2]
    e2e = attention_report.format_e2e(
        [
            {
                "system": "alise engine (cuda)",
                "batch": 64,
                "output_tokens_per_s": 5000.0,
                "decode_tokens_per_s": 6000.0,
                "speedup_vs_hf": 12.5,
                "share_of_roofline": 0.8,
            },
            {"system": "HF generate (static)", "batch": 256, "skipped": "out of GPU memory"},
        ]
    )
    assert "12.5" in e2e and "80.0%" in e2e and "skipped" in e2e
    plot = attention_report.save_plot(report, tmp_path / "attention.png")
    assert plot is not None and plot.stat().st_size > 1000
    json.dumps(report)  # the report stays JSON-serializable


class _OneCallTimer:
    """Runs each call once (through the emulator) and reports 1 s: the code path, not the speed."""

    def median_s(self, call) -> float:
        call()
        return 1.0


def test_mixed_step_scenario_runs_both_paths_and_they_agree_through_the_emulator(tmp_path, monkeypatch):
    from services.bench import attention_mixed
    from services.engine.kernels import ops
    from tests.kernel_sim_driver import HOST_COMPILER, EmulatedKernels, build_driver

    if HOST_COMPILER is None:
        pytest.skip("no g++ to build the SIMT emulator")
    monkeypatch.setattr(ops, "load_kernels", lambda: EmulatedKernels(build_driver(tmp_path)))
    monkeypatch.setattr(ops, "_num_sms", lambda device_index: 132)
    requests = [(3, 1, 40), (1, 12, 30), (1, 3, 19)]  # decodes, a chunk over a prefix, a verify query
    for int8_kv in (False, True):
        inputs = attention_mixed.make_inputs(requests, 8, 2, 64, 16, int8_kv, torch.device("cpu"), seed=1)
        row = attention_mixed.measure_scenario("tiny", inputs, _OneCallTimer(), num_sms=132)
        assert row["num_tokens"] == 18 and row["num_requests"] == 5 and row["varlen_us"] == 1e6
        if not int8_kv:
            assert row["relative_error_vs_per_request"] < 1e-2 and row["speedup_vs_per_request"] == 1.0
    assert "tiny" in attention_mixed.format_mixed([row])
