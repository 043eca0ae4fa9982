"""The client side of `alise generate` (generate_cmd.py holds its flags): build the request, stream it
through services.client, print text deltas to stdout and a one-line summary to stderr.

A module of its own so that `alise generate --help` (and a usage error) imports neither grpc nor
protobuf: generate_cmd imports it only when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

from services.cli.streams import StreamTiming, timed_stream
from services.client import AliseClientError, AsyncAliseClient, ClientTls
from services.common.cli_errors import print_error
from services.common.contracts import common_pb2, gateway_service_pb2

EXIT_RPC_ERROR = 1
EXIT_INTERRUPTED = 130


def build_request(
    args: argparse.Namespace, prompt: str, *, as_chat: bool = False
) -> gateway_service_pb2.GenerateRequest:
    """The GenerateRequest for parsed flags; unset optional flags stay unset for the gateway.

    As chat, the prompt is one user message (after the --system message when given): an instruct
    model answers a chat turn, whereas raw text only gets continued."""
    sampling = common_pb2.SamplingParams(top_k=args.top_k, stop=args.stop, ignore_eos=args.ignore_eos)
    for field in ("max_tokens", "temperature", "top_p", "seed"):
        value = getattr(args, field)
        if value is not None:
            setattr(sampling, field, value)
    request = gateway_service_pb2.GenerateRequest(
        request_id=args.request_id or f"cli-{uuid.uuid4().hex[:12]}", sampling=sampling
    )
    if not as_chat:
        request.prompt_text = prompt
        return request
    if args.system:
        request.messages.add(role=common_pb2.CHAT_ROLE_SYSTEM, content=args.system)
    request.messages.add(role=common_pb2.CHAT_ROLE_USER, content=prompt)
    return request


def format_summary(timing: StreamTiming) -> str:
    """One line: finish reason, token counts, TTFT, tokens/s and the predicted length."""
    final = timing.last_message
    reason = common_pb2.FinishReason.Name(final.finish_reason) if final else "NONE"
    parts = [f"finish={reason.removeprefix('FINISH_REASON_')}"]
    if final is not None and final.HasField("usage"):
        parts += [f"prompt_tokens={final.usage.prompt_tokens}", f"completion_tokens={final.usage.completion_tokens}"]
    else:
        parts.append(f"completion_tokens={timing.num_tokens}")
    ttft = "n/a" if timing.time_to_first_token_s is None else f"{timing.time_to_first_token_s * 1e3:.1f}"
    parts += [f"ttft_ms={ttft}", f"e2e_s={timing.end_to_end_s:.3f}", f"tokens_per_s={timing.tokens_per_s:.1f}"]
    if final is not None and final.HasField("prediction"):
        source = common_pb2.PredictionSource.Name(final.prediction.source).removeprefix("PREDICTION_SOURCE_")
        parts.append(f"predicted_tokens={final.prediction.mean_tokens:.1f}({source.lower()})")
    return " ".join(parts)


class _TextWriter:
    """Writes each text delta to stdout at once; remembers whether a line is left open."""

    def __init__(self) -> None:
        self.wrote_text = False

    def __call__(self, message: gateway_service_pb2.GenerateResponse) -> None:
        if message.text:
            sys.stdout.write(message.text)
            sys.stdout.flush()
            self.wrote_text = True

    def end_line(self) -> None:
        if self.wrote_text:
            print(flush=True)


async def _generate(args: argparse.Namespace, prompt: str, writer: _TextWriter) -> StreamTiming:
    tls = ClientTls(ca_path=args.tls_ca) if args.tls_ca else None
    async with AsyncAliseClient(args.address, api_key=args.api_key, tls=tls) as client:
        as_chat = False
        if not args.raw:
            as_chat = (await client.model_info(timeout_s=args.timeout_s)).has_chat_template
        request = build_request(args, prompt, as_chat=as_chat)

        async def responses():
            async for chunk in client.generate(request, timeout_s=args.timeout_s):
                yield chunk.response

        return await timed_stream(responses, writer)


def run(args: argparse.Namespace) -> int:
    """Runs `alise generate`; returns the exit status."""
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    writer = _TextWriter()
    try:
        timing = asyncio.run(_generate(args, prompt, writer))
    except AliseClientError as error:
        writer.end_line()
        print_error("alise generate", str(error))  # "CODE [REFUSAL_REASON]: details"
        return EXIT_RPC_ERROR
    except KeyboardInterrupt:
        writer.end_line()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    writer.end_line()
    print(format_summary(timing), file=sys.stderr)
    return 0
