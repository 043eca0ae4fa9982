"""The `alise` parser and the pure pieces behind it: flag validation with clear errors, the stack
plan (order, flags, peers), requests built from flags, READY parsing, percentiles, summaries."""

from __future__ import annotations

import math

import pytest

from services.cli import main as cli_main
from services.cli.bench_measure import measure_overhead, percentile
from services.cli.child import parse_ready_line
from services.cli.generate_client import build_request, format_summary
from services.cli.stack_plan import UpConfig, build_stack_plan
from services.cli.streams import StreamTiming
from services.common.contracts import common_pb2, gateway_service_pb2


def _usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "hi", "--top-p", "1.5"], "argument --top-p: must be in (0, 1], got 1.5"),
        (["generate", "hi", "--top-p", "0"], "argument --top-p: must be in (0, 1], got 0"),
        (["generate", "hi", "--max-tokens", "0"], "argument --max-tokens: must be > 0, got 0"),
        (["generate", "hi", "--max-tokens", "ten"], "argument --max-tokens: expected an integer, got 'ten'"),
        (["generate", "hi", "--temperature", "-1"], "argument --temperature: must be >= 0, got -1"),
        (["generate", "hi", "--top-k", "-3"], "argument --top-k: must be >= 0, got -3"),
        (["generate", "hi", "--seed", "-1"], "argument --seed: must be in [0, 2^64), got -1"),
        (["generate", "hi", "--timeout-s", "0"], "argument --timeout-s: must be > 0, got 0"),
        (["generate", "hi", "--address", "localhost"], "argument --address: must be host:port"),
        (["generate", "hi", "--address", "h:99999"], "argument --address: must be host:port"),
        (["up", "--gateway-port", "70000"], "argument --gateway-port: must be a port in [0, 65535], got 70000"),
        (["up", "--log-level", "loud"], "argument --log-level: invalid choice: 'LOUD'"),
        (["up", "--drain-seconds", "-2"], "argument --drain-seconds: must be >= 0, got -2"),
        (["bench", "stack"], "the following arguments are required: --engine-address"),
        (["bench", "stack", "--engine-address", "e:1", "--concurrency", "0"], "argument --concurrency: must be > 0"),
        (["bench"], "the following arguments are required: KIND"),
        ([], "the following arguments are required: COMMAND"),
        (["launch"], "invalid choice: 'launch'"),
    ],
)
def test_bad_flag_values_exit_2_with_a_clear_message(capsys, argv, message):
    assert message in _usage_error(capsys, argv)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("alise ")


def test_up_rejects_two_services_on_one_port_before_starting_anything(capsys):
    status = cli_main.main(["up", "--engine-port", "6000", "--memory-port", "6000", "--log-dir", "/nonexistent/x"])
    assert status == 2
    assert "two services cannot share a port" in capsys.readouterr().err


def test_predictor_args_are_forwarded_verbatim(monkeypatch):
    seen = []
    monkeypatch.setattr(cli_main, "run_predictor_cli", lambda argv: seen.append(list(argv)) or 7)
    assert cli_main.main(["predictor", "train", "--data", "x.jsonl", "--help"]) == 7
    assert seen == [["train", "--data", "x.jsonl", "--help"]]


def test_plan_orders_dependencies_first_and_wires_peers():
    config = UpConfig(
        model="tiny-llama",
        engine_port=6002,
        log_level="DEBUG",
        drain_s=2.0,
        extra_args=(("engine", ("--policy=fcfs",)),),
    )
    plan = build_stack_plan(config, python="/py")
    assert [spec.name for spec in plan] == ["memory", "predictor", "engine", "gateway"]
    engine = plan[2]
    assert engine.argv[:3] == ("/py", "-m", "services.engine")
    assert engine.argv[3:] == (
        "--host",
        "127.0.0.1",
        "--port",
        "6002",
        "--log-level",
        "DEBUG",
        "--drain-seconds",
        "2.0",
        "--model",
        "tiny-llama",
        "--policy=fcfs",
    )
    assert engine.peer_flags == (("--memory-address", "memory"),)
    assert plan[3].peer_flags == (("--engine-address", "engine"), ("--predictor-address", "predictor"))
    assert "--port" in plan[3].argv and plan[3].argv[plan[3].argv.index("--port") + 1] == "50051"


def test_plan_without_predictor():
    plan = build_stack_plan(UpConfig(with_predictor=False), python="/py")
    assert [spec.name for spec in plan] == ["memory", "engine", "gateway"]
    assert plan[-1].peer_flags == (("--engine-address", "engine"),)


def test_up_without_memory_service_gives_the_engine_no_memory_address():
    from services.cli.up_cmd import config_from_args

    config = config_from_args(cli_main.build_parser().parse_args(["up", "--no-memory-service"]))
    assert not config.with_memory and config.with_predictor
    plan = build_stack_plan(config, python="/py")
    assert [spec.name for spec in plan] == ["predictor", "engine", "gateway"]
    assert plan[1].peer_flags == () and "--memory-address" not in plan[1].argv
    assert UpConfig(with_memory=False, memory_port=6001, engine_port=6001).engine_port == 6001  # absent: no clash


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"engine_port": 70000}, "--engine-port must be in [0, 65535]"),
        ({"gateway_port": 7000, "memory_port": 7000}, "cannot share a port"),
        ({"model": ""}, "--model must not be empty"),
        ({"startup_timeout_s": 0}, "--startup-timeout-s must be > 0"),
        ({"extra_args": (("router", ("--x",)),)}, "unknown service 'router'"),
    ],
)
def test_up_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        UpConfig(**kwargs)


def test_ready_line_parsing():
    assert parse_ready_line("READY alise.v1.EngineService 127.0.0.1:41234") == "127.0.0.1:41234"
    assert parse_ready_line("READY a,b [::1]:5") == "[::1]:5"
    assert parse_ready_line("loading weights") is None
    assert parse_ready_line("READY") is None


def test_generate_request_leaves_unset_flags_unset():
    args = cli_main.build_parser().parse_args(["generate", "Hello", "--max-tokens", "8", "--stop", "\n", "--stop", "."])
    request = build_request(args, "Hello")
    assert request.prompt_text == "Hello" and request.request_id.startswith("cli-")
    assert request.sampling.max_tokens == 8 and list(request.sampling.stop) == ["\n", "."]
    for field in ("top_p", "seed"):
        assert not request.sampling.HasField(field), field
    assert request.sampling.HasField("temperature") and request.sampling.temperature == 0  # the CLI is greedy
    chat = build_request(
        cli_main.build_parser().parse_args(["generate", "Hi", "--system", "Be brief."]), "Hi", as_chat=True
    )
    assert not chat.prompt_text and [(m.role, m.content) for m in chat.messages] == [
        (common_pb2.CHAT_ROLE_SYSTEM, "Be brief."),
        (common_pb2.CHAT_ROLE_USER, "Hi"),
    ]
    args = cli_main.build_parser().parse_args(
        ["generate", "x", "--temperature", "0", "--top-p", "0.9", "--seed", "5", "--ignore-eos", "--top-k", "4"]
    )
    sampling = build_request(args, "x").sampling
    assert sampling.HasField("temperature") and sampling.temperature == 0
    assert math.isclose(sampling.top_p, 0.9, rel_tol=1e-6) and sampling.seed == 5
    assert sampling.ignore_eos and sampling.top_k == 4


def test_summary_line():
    final = gateway_service_pb2.GenerateResponse(
        finish_reason=common_pb2.FINISH_REASON_LENGTH,
        usage=common_pb2.Usage(prompt_tokens=5, completion_tokens=20),
        prediction=common_pb2.OutputLengthPrediction(mean_tokens=17.5, source=common_pb2.PREDICTION_SOURCE_PREDICTOR),
    )
    line = format_summary(StreamTiming(20, 0.0123, 2.0, final))
    assert line == (
        "finish=LENGTH prompt_tokens=5 completion_tokens=20 ttft_ms=12.3 e2e_s=2.000 tokens_per_s=10.0 "
        "predicted_tokens=17.5(predictor)"
    )


def test_percentile_matches_linear_interpolation():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert math.isclose(percentile(list(range(11)), 90), 9.0)
    assert math.isnan(percentile([], 50))


async def test_overhead_is_gateway_minus_engine():
    def maker(latency_s: float):
        async def make(max_tokens: int) -> StreamTiming:
            return StreamTiming(max_tokens, latency_s / 2, latency_s, None)

        return make

    result = await measure_overhead(maker(0.012), maker(0.010), num_requests=5, max_tokens=4, num_warmup=1)
    assert math.isclose(result["end_to_end"]["added_p50_ms"], 2.0)
    assert math.isclose(result["end_to_end"]["ratio_p90"], 1.2)
    assert math.isclose(result["ttft"]["added_p90_ms"], 1.0)
