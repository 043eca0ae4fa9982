"""`alise generate "prompt"`: stream one completion from a gateway to stdout.

Text deltas go to stdout as they arrive (flushed per message), so the command pipes like `cat`;
the one-line summary goes to stderr so it never mixes into the text. It calls the gateway through
services.client (API key, TLS, retries only on UNAVAILABLE before any token); a failed call prints
`alise generate: error: <STATUS>: <message>` (services/common/cli_errors.py) and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

from services.cli.streams import StreamTiming, timed_stream
from services.client import AliseClientError, AsyncAliseClient, ClientTls
from services.common import arg_types
from services.common.cli_errors import print_error
from services.common.contracts import common_pb2, gateway_service_pb2

EXIT_RPC_ERROR = 1
EXIT_INTERRUPTED = 130


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers `generate` and its flags."""
    parser = subparsers.add_parser("generate", help="stream one completion from a running gateway")
    parser.add_argument("prompt", help='prompt text; "-" reads it from stdin')
    parser.add_argument("--address", type=arg_types.address, default="127.0.0.1:50051", help="gateway host:port")
    parser.add_argument("--max-tokens", type=arg_types.positive_int, help="upper bound on generated tokens")
    parser.add_argument(
        "--temperature",
        type=arg_types.non_negative_float,
        default=0.0,
        help="0 = greedy (the default here: a 135M model sampled at 1.0 rambles; the API's default is 1.0)",
    )
    parser.add_argument("--top-p", type=arg_types.probability_mass, help="nucleus mass in (0, 1]")
    parser.add_argument("--top-k", type=arg_types.non_negative_int, default=0, help="0 disables")
    parser.add_argument("--seed", type=arg_types.seed, help="seed of the request's random generator")
    parser.add_argument(
        "--stop", action="append", default=[], metavar="S", help="stop string, not returned (repeatable)"
    )
    parser.add_argument("--ignore-eos", action="store_true", help="generate past EOS until --max-tokens")
    parser.add_argument("--timeout-s", type=arg_types.positive_float, default=600.0, help="gRPC deadline")
    parser.add_argument("--request-id", default="", help="client request id (default: generated)")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="send the prompt as plain text (default: as a user chat message when the model has a chat template)",
    )
    parser.add_argument("--system", default="", help="system message of the chat (default: the template's own)")
    parser.add_argument("--api-key", default="", help="API key of the gateway (sent as 'authorization: Bearer')")
    parser.add_argument("--tls-ca", default="", help="connect with TLS, verifying the gateway with this CA (PEM)")
    parser.set_defaults(handler=run)


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
        print_error("alise generate", f"{error.code.name}: {error.details}")
        return EXIT_RPC_ERROR
    except KeyboardInterrupt:
        writer.end_line()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    writer.end_line()
    print(format_summary(timing), file=sys.stderr)
    return 0
