"""min_tokens: the stop-token mask (services/engine/min_tokens.py), one verdict for bad values on gRPC and
HTTP, stop strings held off by the gateway, and the real engine generating past its EOS through the
`openai` SDK and gRPC.

The real-engine test makes the tiny random model's own greedy first token its EOS (a `dummy:<dir>`
model whose config names that id): without min_tokens the request ends at once with EOS; with it the
engine must mask that token until min_tokens tokens exist.
"""

from __future__ import annotations

import grpc
import httpx2
import openai
import pytest
import torch

from services.common.contracts import common_pb2, gateway_service_pb2_grpc
from services.common.model_catalog import DUMMY_TINY_MODEL
from services.engine import app as engine_app
from services.engine.config import EngineConfig
from services.engine.min_tokens import apply_min_tokens, mask_stop_tokens, model_stop_token_ids, stop_token_tensor
from services.engine.model_loader import load_model
from services.engine.model_presets import preset_config
from services.engine.request import Request, SamplingOptions
from services.gateway import app as gateway_app
from services.gateway.config import GatewayConfig
from tests.gateway_fakes import TOKENIZER, collect, stack, text_request  # noqa: F401 (stack is a fixture)

pytestmark = pytest.mark.timeout(120)
PROMPT_IDS = [1, 415, 2936, 9060, 285, 1142]  # "<s> The quick brown fox" in the default tokenizer


def _request(min_tokens: int, num_output_tokens: int) -> Request:
    sampling = SamplingOptions(
        max_tokens=16, temperature=0.0, top_p=1.0, top_k=0, seed=0, ignore_eos=False, min_tokens=min_tokens
    )
    request = Request(f"r{min_tokens}-{num_output_tokens}", [1, 2, 3], sampling, 0.0, 8.0)
    request.output_token_ids = [7] * num_output_tokens
    return request


def test_mask_sets_only_the_stop_columns_of_masked_rows():
    logits = torch.randn(4, 50)
    original = logits.clone()
    stop_ids = stop_token_tensor([2, 5], torch.device("cpu"))
    mask_stop_tokens(logits, torch.tensor([True, False, True, False]), stop_ids)
    for row in (0, 2):
        assert torch.isneginf(logits[row, [2, 5]]).all()
        keep = [c for c in range(50) if c not in (2, 5)]
        assert torch.equal(logits[row, keep], original[row, keep])
    assert torch.equal(logits[[1, 3]], original[[1, 3]])


def test_apply_masks_rows_below_their_min_tokens_and_leaves_others_bit_identical():
    stop_ids = stop_token_tensor([2], torch.device("cpu"))
    requests = [_request(3, 0), _request(3, 2), _request(3, 3), _request(0, 0), _request(1, 5)]
    logits = torch.zeros(5, 10, dtype=torch.bfloat16)
    logits[:, 2] = 10.0  # EOS is every row's argmax
    apply_min_tokens(logits, requests, stop_ids)
    assert logits.argmax(dim=-1).tolist()[:2] != [2, 2] and torch.isneginf(logits[:2, 2]).all()
    assert logits[2:, 2].tolist() == [10.0, 10.0, 10.0]
    untouched = torch.ones(2, 10)
    assert apply_min_tokens(untouched, [_request(0, 0), _request(0, 1)], stop_ids) is untouched
    assert torch.equal(untouched, torch.ones(2, 10))


def test_model_stop_token_ids_reads_generation_and_model_config():
    model = load_model(DUMMY_TINY_MODEL, dtype=torch.float32, device=torch.device("cpu"), seed=0).model
    assert model_stop_token_ids(model) == (2,)
    model.generation_config.eos_token_id = [2, 9, 2]
    assert model_stop_token_ids(model) == (2, 9)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"min_tokens": -1, "max_tokens": 4}, "sampling.min_tokens must be >= 0, got -1"),
        ({"min_tokens": 5, "max_tokens": 4}, "sampling.min_tokens (5) must be <= max_tokens (4)"),
        ({"min_tokens": 300}, "sampling.min_tokens (300) must be <= max_tokens ("),  # default max, clipped
    ],
)
async def test_bad_min_tokens_gets_one_verdict_on_grpc_and_http(stack, fields, message):
    stub = await stack.start()
    sampling = common_pb2.SamplingParams(**fields)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await collect(stub.Generate(text_request(sampling=sampling), timeout=10))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and raised.value.details().startswith(message)
    async with httpx2.AsyncClient(base_url=stack.handle.http_url, timeout=10) as client:
        response = await client.post("/v1/completions", json={"prompt": "Say hello", **fields})
    error = response.json()["error"]
    assert response.status_code == 400 and error["message"] == raised.value.details()
    assert error["param"] == "min_tokens" and error["type"] == "invalid_request_error"
    assert stack.engine.requests == []


async def test_min_tokens_reaches_the_engine_and_holds_off_stop_strings(stack):
    stub = await stack.start()
    stack.engine.output_ids = TOKENIZER.encode("Hello there Hello again", add_bos=False)
    sampling = common_pb2.SamplingParams(max_tokens=8, stop=["Hello"])
    early = await collect(stub.Generate(text_request(sampling=sampling), timeout=10))
    assert "".join(r.text for r in early).strip() == "" and early[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    sampling.min_tokens = 2
    held = await collect(stub.Generate(text_request(sampling=sampling), timeout=10))
    assert "".join(r.text for r in held).strip() == "Hello there"  # the first "Hello" came before min_tokens
    assert held[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    assert [r.sampling.min_tokens for r in stack.engine.requests] == [0, 2]


@pytest.fixture(scope="module")
def eos_is_first_greedy_token(tmp_path_factory):
    """A dummy:<dir> model with dummy-llama-tiny's shape and weights whose EOS is its greedy first token."""
    loaded = load_model(DUMMY_TINY_MODEL, dtype=torch.float32, device=torch.device("cpu"), seed=0)
    with torch.inference_mode():
        first = int(loaded.model(torch.tensor([PROMPT_IDS])).logits[0, -1].argmax())
    config = preset_config(DUMMY_TINY_MODEL)
    config.eos_token_id = first
    directory = tmp_path_factory.mktemp("eos-model")
    config.save_pretrained(directory)
    return str(directory), first


async def test_the_real_engine_generates_min_tokens_past_its_eos(eos_is_first_greedy_token):
    directory, eos = eos_is_first_greedy_token
    engine = await engine_app.start(
        EngineConfig(
            port=0,
            model=f"dummy:{directory}",
            dtype="float32",
            device="cpu",
            num_kv_blocks=64,
            cpu_threads=1,
            drain_s=0.0,
            metrics_port=None,
        )
    )
    gateway = await gateway_app.start(GatewayConfig(engine_address=engine.address, port=0))
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            plain = common_pb2.SamplingParams(max_tokens=12, temperature=0.0)
            ended = await collect(
                stub.Generate(text_request("", prompt_token_ids=PROMPT_IDS, sampling=plain), timeout=30)
            )
            assert ended[-1].finish_reason == common_pb2.FINISH_REASON_EOS
            assert ended[-1].usage.completion_tokens <= 1  # the model's first choice is its EOS
            held = common_pb2.SamplingParams(max_tokens=12, temperature=0.0, min_tokens=6)
            kept = await collect(
                stub.Generate(text_request("", prompt_token_ids=PROMPT_IDS, sampling=held), timeout=30)
            )
        token_ids = [t for r in kept for t in r.token_ids]
        assert kept[-1].usage.completion_tokens >= 6 and eos not in token_ids[:6]
        async with openai.AsyncOpenAI(base_url=f"{gateway.http_url}/v1", api_key="x", max_retries=0) as client:
            completion = await client.completions.create(
                model="", prompt=PROMPT_IDS, max_tokens=12, temperature=0, extra_body={"min_tokens": 6}
            )
            assert completion.usage.completion_tokens >= 6
            plain_completion = await client.completions.create(
                model="", prompt=PROMPT_IDS, max_tokens=12, temperature=0
            )
            assert plain_completion.usage.completion_tokens <= 1 and plain_completion.choices[0].finish_reason == "stop"
    finally:
        await gateway.stop(0)
        await engine.stop(0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_mask_runs_on_the_gpu_in_bfloat16():
    device = torch.device("cuda")
    logits = torch.randn(64, 49152, dtype=torch.bfloat16, device=device)
    logits[:, 2] = 100.0
    original = logits.clone()
    requests = [_request(4, row % 6) for row in range(64)]  # rows with 0-3 output tokens are masked
    apply_min_tokens(logits, requests, stop_token_tensor([2], device))
    masked = torch.tensor([row % 6 < 4 for row in range(64)], device=device)
    assert torch.isneginf(logits[masked, 2]).all() and (logits[~masked].argmax(-1) == 2).all()
    keep = torch.ones(49152, dtype=torch.bool, device=device)
    keep[2] = False
    assert torch.equal(logits[:, keep], original[:, keep])
