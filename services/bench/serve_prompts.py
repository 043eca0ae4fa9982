"""Trace requests -> the exact prompts and output lengths `alise bench serve` sends.

The trace counts prompt tokens in Llama-2 tokens; the served model has its own tokenizer. To make
the engine do exactly the trace's (scaled) work, the client sends `prompt_token_ids` (the gateway
accepts them as given and decodes them for the predictor) built as:

    [BOS] + first num_prompt_tokens ids of the prompt text in the served tokenizer
            (the text's ids repeated when the text is shorter; FILLER_TEXT for length-only traces)

so the engine sees num_prompt_tokens + 1 prompt tokens, like a real request whose text has that
many tokens. The output is max_tokens = num_output_tokens with ignore_eos (vLLM's method).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from services.bench.workload import TraceRequest
from services.common.tokenizer import Tokenizer

# Used for traces without text and for texts that tokenize to nothing.
FILLER_TEXT = (
    "Explain step by step how a busy restaurant kitchen decides which order to cook next, "
    "and what happens to the guests who ordered the longest dishes."
)


@dataclass(frozen=True)
class ServeRequest:
    """One request as the load generator sends it."""

    request_id: str  # the trace's id, unique within a run
    prompt_token_ids: tuple[int, ...]  # BOS (if the tokenizer has one) + exactly the trace's prompt count
    max_tokens: int  # the trace's output length, generated in full (ignore_eos); a cap for chat requests
    chat_text: str = ""  # set: sent as one user chat message instead of the ids, stopping at EOS

    def job(self, seed: int) -> dict:
        """The request as the load generator's JSON job entry (serve_worker.generate_request)."""
        return {
            "request_id": self.request_id,
            "prompt_token_ids": list(self.prompt_token_ids),
            "chat_text": self.chat_text,
            "max_tokens": self.max_tokens,
            "seed": seed,
        }


def fit_prompt(text: str | None, num_tokens: int, tokenizer: Tokenizer) -> tuple[int, ...]:
    """BOS + exactly num_tokens ids of `text` (cycled when short; FILLER_TEXT when None or empty)."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    ids = tokenizer.encode(text, add_bos=False) if text else []
    if not ids:
        ids = tokenizer.encode(FILLER_TEXT, add_bos=False)
    repeats = -(-num_tokens // len(ids))  # ceil division
    body = (ids * repeats)[:num_tokens]
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    return tuple(bos + body)


def build_requests(
    trace: Sequence[TraceRequest], tokenizer: Tokenizer, *, max_context_tokens: int
) -> list[ServeRequest]:
    """The requests to send; ValueError if one would not fit the served model's context."""
    requests = []
    for item in trace:
        prompt = fit_prompt(item.prompt_text, item.num_prompt_tokens, tokenizer)
        if len(prompt) + item.num_output_tokens > max_context_tokens:
            raise ValueError(
                f"request {item.request_id}: {len(prompt)} prompt + {item.num_output_tokens} output tokens "
                f"exceed the model context of {max_context_tokens}; scale the trace down further"
            )
        requests.append(ServeRequest(item.request_id, prompt, item.num_output_tokens))
    return requests


def build_chat_requests(
    trace: Sequence[TraceRequest], tokenizer: Tokenizer, *, max_output_tokens: int
) -> list[ServeRequest]:
    """Requests answered at the served model's own length: the trace's prompt text as a chat
    message (cut to the trace's scaled prompt length in served tokens), max_tokens only a cap."""
    if tokenizer.chat_template is None:
        raise ValueError(
            f"--output-lengths model sends chat messages; tokenizer {tokenizer.name!r} has no chat template"
        )
    requests = []
    for item in trace:
        if not item.prompt_text:
            raise ValueError(f"--output-lengths model needs prompt text; request {item.request_id} has none")
        ids = tokenizer.encode(item.prompt_text, add_bos=False)[: item.num_prompt_tokens]
        text = tokenizer.decode(ids).strip() or FILLER_TEXT
        requests.append(ServeRequest(item.request_id, tuple(ids), max_output_tokens, chat_text=text))
    return requests
