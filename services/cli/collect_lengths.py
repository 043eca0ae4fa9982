"""`alise collect-lengths`: answer real prompts through a running stack so the predictor learns the
served model's own output lengths.

    ShareGPT first turns + Alpaca-like instructions (../shared/data), deduplicated by normalized text
        -> GatewayService.Generate as one user chat message (max_tokens 512 by default), N at a time
        -> the gateway reports each finished request to the predictor, which stores it when it runs
           with --feedback-dir; then `alise predictor train --from-feedback DIR` learns the lengths

Why through the stack and not a local generate() loop: the lengths recorded are then exactly what
the served model produces under serving (its tokenizer, template, sampling and EOS), and the same
path collects them in production. The command also writes its own JSONL (one line per answered
prompt) and stops sending at --max-duration-s, so it is bounded in time; progress goes to stderr.

--skip-answered FILE continues an earlier collection: the prompts FILE answered are left out, and
every other prompt keeps its index in the full list, because its request seed is derived from that
index (seed * 1_000_003 + index), so a continued run samples exactly what one full run would have:

    list     0 1 2 3 4 5          answered in FILE: 1, 2, 4
    sent     0     3   5          with seeds of indices 0, 3, 5 (not 0, 1, 2)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import pathlib
import sys
import time
from dataclasses import dataclass

import grpc

from services.cli.answered_prompts import read_answered
from services.common import arg_types
from services.common.cli_errors import print_error
from services.common.contracts import common_pb2, gateway_service_pb2, gateway_service_pb2_grpc
from services.common.server import GRPC_OPTIONS

PROGRESS_EVERY = 25  # answered prompts between progress lines


@dataclass(frozen=True)
class Prompt:
    """One prompt to answer."""

    prompt_id: str  # the dataset's id, e.g. sharegpt-<id>, alpaca-<idx>
    text: str  # the user's words


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("collect-lengths", help="answer dataset prompts through a stack (feedback)")
    parser.add_argument("--address", type=arg_types.address, default="127.0.0.1:50051", help="gateway host:port")
    parser.add_argument("--num-sharegpt", type=arg_types.non_negative_int, default=1000)
    parser.add_argument("--num-alpaca", type=arg_types.non_negative_int, default=600)
    parser.add_argument("--max-tokens", type=arg_types.positive_int, default=512)
    parser.add_argument(
        "--temperature",
        type=arg_types.non_negative_float,
        default=0.2,
        help="default 0.2 with top-p 0.9: SmolLM2's model card settings",
    )
    parser.add_argument("--top-p", type=arg_types.probability_mass, default=0.9)
    parser.add_argument("--concurrency", type=arg_types.positive_int, default=32, help="requests in flight")
    parser.add_argument(
        "--max-duration-s",
        type=arg_types.positive_float,
        default=3600.0,
        help="stop sending new prompts after this long",
    )
    parser.add_argument("--max-prompt-chars", type=arg_types.positive_int, default=4000)
    parser.add_argument("--seed", type=int, default=0, help="which prompts, and the requests' seeds")
    parser.add_argument(
        "--reverse",
        action="store_true",
        help="answer the list from its end: a second collector on another stack covers the same "
        "prompts without overlap until the two meet",
    )
    parser.add_argument(
        "--skip-answered",
        type=pathlib.Path,
        action="append",
        default=[],
        metavar="PATH",
        help="repeatable: skip the prompts PATH answered (a lengths file, a feedback JSONL or a collect-lengths "
        "--out JSONL); the others keep their list index and so their request seed",
    )
    parser.add_argument("--out", type=pathlib.Path, required=True, help="JSONL of answered prompts")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None, help="shared data (default ../shared/data)")
    parser.set_defaults(handler=run)


def load_prompts(args: argparse.Namespace) -> list[Prompt]:
    """ShareGPT and Alpaca-like prompts, shuffled by seed, unique up to case and whitespace."""
    from services.bench.workload import ALPACA, SHAREGPT, load_trace

    requests = []
    for trace, count in ((SHAREGPT, args.num_sharegpt), (ALPACA, args.num_alpaca)):
        if count:
            requests += load_trace(trace, num_requests=count, seed=args.seed, data_dir=args.data_dir)
    seen: set[str] = set()
    prompts = []
    for request in requests:
        key = prompt_key(request.prompt_text or "")
        if key and key not in seen and len(request.prompt_text) <= args.max_prompt_chars:
            seen.add(key)
            prompts.append(Prompt(request.request_id, request.prompt_text))
    return prompts


def prompt_key(text: str) -> str:
    """The text up to case and whitespace: the list's deduplication key, also matched by --skip-answered."""
    return " ".join(text.lower().split())


def unanswered(prompts: list[Prompt], skip_paths: list[pathlib.Path]) -> list[tuple[int, Prompt]]:
    """(list index, prompt) of every prompt the files did not answer, in list order, indices unchanged."""
    answered = read_answered(skip_paths, prompt_key)
    return [
        (index, prompt)
        for index, prompt in enumerate(prompts)
        if not answered.contains(prompt.prompt_id, prompt_key(prompt.text))
    ]


def _request(prompt: Prompt, args: argparse.Namespace, index: int) -> gateway_service_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed * 1_000_003 + index
    )
    request = gateway_service_pb2.GenerateRequest(request_id=f"collect-{prompt.prompt_id}", sampling=sampling)
    request.messages.add(role=common_pb2.CHAT_ROLE_USER, content=prompt.text)
    return request


async def _answer(stub, prompt: Prompt, request, timeout_s: float) -> dict:
    final = None
    async for message in stub.Generate(request, timeout=timeout_s):
        final = message
    return {
        "prompt_id": prompt.prompt_id,
        "prompt": prompt.text,
        "num_prompt_tokens": final.usage.prompt_tokens,
        "num_output_tokens": final.usage.completion_tokens,
        "finish_reason": common_pb2.FinishReason.Name(final.finish_reason),
        "predicted_mean_tokens": final.prediction.mean_tokens,
    }


async def collect(args: argparse.Namespace, prompts: list[tuple[int, Prompt]]) -> tuple[int, int]:
    """Answers (list index, prompt) pairs until all are done or the time is up; returns (answered, failed)."""
    started = time.monotonic()
    deadline = started + args.max_duration_s
    queue = collections.deque(reversed(prompts) if args.reverse else prompts)
    counts = {"answered": 0, "failed": 0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    async with grpc.aio.insecure_channel(args.address, options=GRPC_OPTIONS) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        with args.out.open("a") as out:

            async def worker() -> None:
                while queue and time.monotonic() < deadline:
                    index, prompt = queue.popleft()
                    try:
                        record = await _answer(stub, prompt, _request(prompt, args, index), args.max_duration_s)
                    except grpc.aio.AioRpcError as error:
                        counts["failed"] += 1
                        print(f"{prompt.prompt_id}: {error.code().name}: {error.details()}", file=sys.stderr)
                        continue
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                    counts["answered"] += 1
                    if counts["answered"] % PROGRESS_EVERY == 0:
                        out.flush()
                        _progress(counts, len(prompts), started)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    _progress(counts, len(prompts), started)
    return counts["answered"], counts["failed"]


def _progress(counts: dict, total: int, started: float) -> None:
    elapsed = time.monotonic() - started
    print(
        f"collect-lengths: {counts['answered']}/{total} answered, {counts['failed']} failed, "
        f"{elapsed:.0f} s, {counts['answered'] / max(elapsed, 1e-9) * 60:.1f} prompts/min",
        file=sys.stderr,
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    try:
        prompts = load_prompts(args)
        remaining = unanswered(prompts, args.skip_answered)
    except (FileNotFoundError, ValueError) as error:  # an unreadable --skip-answered file is a ValueError
        print_error("alise collect-lengths", str(error))
        return 2
    if args.skip_answered:
        print(
            f"collect-lengths: skipped {len(prompts) - len(remaining)} of {len(prompts)} prompts already answered "
            f"in {', '.join(map(str, args.skip_answered))}; {len(remaining)} to send",
            file=sys.stderr,
            flush=True,
        )
    answered, failed = asyncio.run(collect(args, remaining))
    return 0 if answered and not failed else 1
