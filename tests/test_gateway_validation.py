"""resolve_generate_request as a pure function (defaults, clipping), and GatewayConfig checks.

Every rejection case also runs through real gRPC in test_gateway_invalid_requests.py; here the resolved
values are checked directly.
"""

from __future__ import annotations

import pytest

from services.common.contracts import common_pb2, gateway_service_pb2
from services.common.errors import InvalidRequest
from services.common.tokenizer import load_tokenizer
from services.gateway.config import GatewayConfig
from services.gateway.model_info import ModelInfo
from services.gateway.validation import RequestLimits, resolve_generate_request

TOKENIZER = load_tokenizer("default")
MODEL = ModelInfo("m", max_context_tokens=100, vocab_size=32000, eos_token_id=2, tokenizer_spec="default")
LIMITS = RequestLimits(default_max_tokens=256, max_stop_strings=2, max_stop_string_chars=8, max_request_id_chars=10)


def resolve(request: gateway_service_pb2.GenerateRequest):
    return resolve_generate_request(
        request, MODEL, TOKENIZER, LIMITS, new_request_id=lambda: "generated", draw_seed=lambda: 99
    )


def text_request(**sampling) -> gateway_service_pb2.GenerateRequest:
    sampling_params = common_pb2.SamplingParams(**sampling)
    return gateway_service_pb2.GenerateRequest(prompt_text="x", sampling=sampling_params)


def test_unset_fields_get_documented_defaults():
    resolved = resolve(gateway_service_pb2.GenerateRequest(prompt_text="Hi there"))
    prompt_ids = TOKENIZER.encode("Hi there", add_bos=True)
    assert resolved.prompt_token_ids == prompt_ids and resolved.prompt_text == "Hi there"
    assert resolved.request_id == "generated"
    sampling = resolved.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.seed) == (1.0, 1.0, 0, 99)
    assert sampling.max_tokens == 100 - len(prompt_ids)  # default 256 clipped to the context room
    assert resolved.priority_class == common_pb2.PRIORITY_CLASS_STANDARD
    assert resolved.expected_output_tokens is None


def test_default_max_tokens_applies_when_the_context_has_room():
    limits = RequestLimits(default_max_tokens=5, max_stop_strings=2, max_stop_string_chars=8, max_request_id_chars=10)
    resolved = resolve_generate_request(
        gateway_service_pb2.GenerateRequest(prompt_token_ids=[1, 5]),
        MODEL,
        TOKENIZER,
        limits,
        new_request_id=lambda: "x",
        draw_seed=lambda: 0,
    )
    assert resolved.sampling.max_tokens == 5


def test_client_values_are_kept():
    request = gateway_service_pb2.GenerateRequest(
        request_id="mine",
        prompt_token_ids=[1, 7, 8],
        sampling=common_pb2.SamplingParams(
            max_tokens=97, temperature=0.0, top_p=0.25, top_k=3, seed=5, stop=["a", "bb"], ignore_eos=True
        ),
        priority_class=common_pb2.PRIORITY_CLASS_INTERACTIVE,
        expected_output_tokens=12,
    )
    resolved = resolve(request)
    assert resolved.request_id == "mine" and resolved.prompt_text == ""
    sampling = resolved.sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p, sampling.top_k) == (97, 0.0, 0.25, 3)
    assert (sampling.seed, sampling.stop_strings, sampling.ignore_eos) == (5, ("a", "bb"), True)
    assert resolved.priority_class == common_pb2.PRIORITY_CLASS_INTERACTIVE
    assert resolved.expected_output_tokens == 12


def test_max_tokens_may_fill_the_context_exactly():
    request = gateway_service_pb2.GenerateRequest(
        prompt_token_ids=[1] * 40, sampling=common_pb2.SamplingParams(max_tokens=60)
    )
    assert resolve(request).sampling.max_tokens == 60
    request.sampling.max_tokens = 61
    with pytest.raises(InvalidRequest, match="exceeds the model context of 100"):
        resolve(request)


def test_limits_come_from_the_request_limits():
    with pytest.raises(InvalidRequest, match="at most 2 strings, got 3"):
        resolve(text_request(stop=["a"] * 3))
    with pytest.raises(InvalidRequest, match="at most 8 characters, got 9"):
        resolve(text_request(stop=["a" * 9]))
    with pytest.raises(InvalidRequest, match="at most 10 characters, got 11"):
        resolve(gateway_service_pb2.GenerateRequest(prompt_text="x", request_id="r" * 11))


def test_text_prompt_ids_beyond_the_engine_vocabulary_are_rejected():
    small_model = ModelInfo("m", max_context_tokens=100, vocab_size=1000, eos_token_id=2, tokenizer_spec="default")
    with pytest.raises(InvalidRequest, match=r"prompt_text \(tokenized\)\[\d+\] = \d+ is out of range"):
        resolve_generate_request(
            gateway_service_pb2.GenerateRequest(prompt_text="Supercalifragilistic"),
            small_model,
            TOKENIZER,
            LIMITS,
            new_request_id=lambda: "x",
            draw_seed=lambda: 0,
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"engine_address": "nohostport"}, "engine_address must be host:port"),
        ({"predictor_address": "127.0.0.1:notaport"}, "predictor_address"),
        ({"predictor_timeout_ms": 0}, "predictor_timeout_ms must be > 0"),
        ({"default_max_tokens": -1}, "default_max_tokens must be > 0"),
        ({"max_stop_strings": 0}, "max_stop_strings must be > 0"),
        ({"fallback_output_tokens": 0}, "fallback_output_tokens must be > 0"),
        ({"port": 70000}, "port must be in"),
        ({"model_info_timeout_s": 0.0}, "model_info_timeout_s"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    fields = {"engine_address": "127.0.0.1:50052", **overrides}
    with pytest.raises(ValueError, match=message):
        GatewayConfig(**fields)


def test_config_from_args():
    config = GatewayConfig.from_args(
        [
            "--engine-address",
            "127.0.0.1:50052",
            "--predictor-address",
            "127.0.0.1:50053",
            "--predictor-timeout-ms",
            "20",
            "--port",
            "0",
            "--tokenizer",
            "default",
        ]
    )
    assert (config.engine_address, config.predictor_address) == ("127.0.0.1:50052", "127.0.0.1:50053")
    assert (config.predictor_timeout_s, config.port, config.tokenizer) == (0.02, 0, "default")
    assert (config.default_max_tokens, config.max_stop_strings) == (256, 16)
    with pytest.raises(SystemExit):
        GatewayConfig.from_args(["--engine-address", "bad"])
