"""Chat through the real gateway and engine serving the default model (SmolLM2-135M-Instruct, fp32)."""

import grpc
import pytest
import pytest_asyncio

from services.common.contracts import common_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from services.common.model_catalog import DEFAULT_MODEL
from services.engine import app as engine_app
from services.engine.config import EngineConfig
from services.gateway import app as gateway_app
from services.gateway.config import GatewayConfig

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gateway():
    engine = await engine_app.start(
        EngineConfig(
            port=0,
            model=DEFAULT_MODEL,
            dtype="float32",
            device="cpu",
            num_kv_blocks=256,
            max_num_seqs=8,
            cpu_threads=1,
            drain_s=0.0,
            engine_id="chat-engine",
        )
    )
    gateway = await gateway_app.start(GatewayConfig(engine_address=engine.address, port=0))
    channel = grpc.aio.insecure_channel(gateway.address)
    yield gateway_service_pb2_grpc.GatewayServiceStub(channel)
    await channel.close()
    await gateway.stop()
    await engine.stop()


def _chat(*turns: tuple[int, str], max_tokens: int = 24) -> gateway_service_pb2.GenerateRequest:
    request = gateway_service_pb2.GenerateRequest(
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0)
    )
    for role, content in turns:
        request.messages.add(role=role, content=content)
    return request


async def test_model_info_names_the_model_its_tokenizer_and_its_chat_template(gateway):
    info = await gateway.GetModelInfo(gateway_service_pb2.GetModelInfoRequest())
    assert (info.model_name, info.tokenizer, info.has_chat_template) == (DEFAULT_MODEL, DEFAULT_MODEL, True)
    assert (info.vocab_size, info.eos_token_id, info.max_context_tokens) == (49152, 2, 8192)


async def test_a_chat_question_gets_a_sensible_answer_that_ends_at_eos(gateway):
    responses = [
        r async for r in gateway.Generate(_chat((common_pb2.CHAT_ROLE_USER, "What is the capital of France?")))
    ]
    final = responses[-1]
    text = "".join(r.text for r in responses)
    assert final.finish_reason == common_pb2.FINISH_REASON_EOS and "Paris" in text, text
    assert final.usage.completion_tokens < 24 and "<|im_end|>" not in text  # EOS ends it and is not shown


async def test_a_system_message_replaces_the_templates_default(gateway):
    system_only = [
        r
        async for r in gateway.Generate(
            _chat(
                (common_pb2.CHAT_ROLE_SYSTEM, "Answer with one word."),
                (common_pb2.CHAT_ROLE_USER, "Capital of France?"),
            )
        )
    ]
    default = [r async for r in gateway.Generate(_chat((common_pb2.CHAT_ROLE_USER, "Capital of France?")))]
    assert system_only[-1].usage.prompt_tokens != default[-1].usage.prompt_tokens  # the template's own system text went


async def test_unspecified_role_is_invalid_argument_naming_the_message(gateway):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in gateway.Generate(_chat((common_pb2.CHAT_ROLE_UNSPECIFIED, "hi"))):
            pass
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[0].role" in error.value.details()
