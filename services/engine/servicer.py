"""EngineService over gRPC: protobuf in, domain Request to the engine thread, tokens out."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.common.contracts import common_pb2, engine_service_pb2, engine_service_pb2_grpc
from services.common.errors import AlreadyExists, NotReady, Overloaded
from services.common.refusal import RefusalReason
from services.engine.admission import build_request
from services.engine.admission_control import AdmissionControl, AdmissionLimits
from services.engine.engine_loop import EngineEvent, EngineLoop
from services.engine.request import FinishReason

_FINISH_REASONS = {
    FinishReason.EOS: common_pb2.FINISH_REASON_EOS,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORTED: common_pb2.FINISH_REASON_ABORTED,
}


@dataclass(frozen=True)
class ServedModelInfo:
    """What GetModelInfo reports and admission checks against."""

    model_name: str
    tokenizer: str
    max_model_len: int  # prompt + output tokens at most
    vocab_size: int
    eos_token_id: int | None  # None: the model has no end-of-sequence token (GetModelInfo leaves it unset)
    has_chat_template: bool = False  # the tokenizer renders chat messages


class EngineServicer(engine_service_pb2_grpc.EngineServiceServicer):
    def __init__(
        self,
        loop: EngineLoop,
        info: ServedModelInfo,
        max_live_requests: int,
        limits: AdmissionLimits | None = None,
        max_num_seqs: int = 0,  # the running batch's capacity, reported by GetStats (0 = not reported)
    ) -> None:
        self._loop = loop
        self._info = info
        self._max_num_seqs = max_num_seqs
        # max_live_requests alone: no prompt-token cap and no deadline check (unit tests)
        self._admission = AdmissionControl(limits or AdmissionLimits(max_live_requests, 2**62, 0.0))

    async def Generate(self, request, context):
        # No draining flag here: on SIGTERM the server's stop (services/common/server.py) refuses new
        # calls UNAVAILABLE before any handler runs, and ends the ones still running at the drain
        # deadline UNAVAILABLE with reason DRAINING (services/common/drain.py).
        domain_request = build_request(
            request, vocab_size=self._info.vocab_size, max_model_len=self._info.max_model_len
        )
        self._admit(domain_request, context.time_remaining())
        events = self._loop.submit(domain_request)
        finished = False
        try:
            while not finished:
                event = await events.get()
                token_ids, event = _coalesce(event, events)
                finished = event.finish_reason is not None
                yield self._response(token_ids, event)
        finally:
            self._admission.release(domain_request.request_id)
            if not finished:  # client cancelled or deadline passed: free the KV blocks now
                self._loop.abort(domain_request.request_id)

    def _admit(self, domain_request, time_left_s: float | None) -> None:
        """Raises AlreadyExists, or Overloaded (queue caps, deadline that cannot be met, KV too small)."""
        request_id = domain_request.request_id
        if request_id in self._admission:
            raise AlreadyExists(f"request id {request_id!r} is already running on this engine")
        if not self._loop.core.scheduler.can_ever_fit(
            domain_request.num_prompt_tokens, domain_request.sampling.max_tokens
        ):
            raise Overloaded(
                f"prompt + max_tokens ({domain_request.max_total_tokens} tokens) exceeds the whole KV cache "
                f"of this engine",
                refusal_reason=RefusalReason.EXCEEDS_KV_CAPACITY,
            )
        self._admission.admit(
            request_id,
            domain_request.num_prompt_tokens,
            domain_request.predicted_remaining_tokens,
            time_left_s,
            self._loop.queue_profile,
        )

    def _response(self, token_ids: list[int], event: EngineEvent):
        if event.error is not None:
            raise NotReady(f"engine failed the request: {event.error}")
        response = engine_service_pb2.EngineServiceGenerateResponse(token_ids=token_ids)
        if event.finish_reason is not None:
            response.finish_reason = _FINISH_REASONS[event.finish_reason]
            timings = event.timings
            response.timings.CopyFrom(
                common_pb2.Timings(
                    queue_time_s=timings.queue_time_s,
                    time_to_first_token_s=timings.time_to_first_token_s,
                    end_to_end_s=timings.end_to_end_s,
                    num_preemptions=timings.num_preemptions,
                )
            )
        return response

    async def Abort(self, request, context):
        found = request.request_id in self._admission
        if found:
            self._loop.abort(request.request_id)
        return engine_service_pb2.AbortResponse(found=found)

    async def GetStats(self, request, context):
        snapshot, admission = self._loop.snapshot, self._admission  # admission: this (asyncio) thread's own
        return engine_service_pb2.EngineServiceGetStatsResponse(
            engine_id=snapshot.engine_id,
            num_running=snapshot.num_running,
            num_waiting=snapshot.num_waiting,
            num_preempted=snapshot.num_preempted,
            num_kv_blocks_total=snapshot.num_kv_blocks_total,
            num_kv_blocks_used=snapshot.num_kv_blocks_used,
            num_kv_blocks_free=snapshot.num_kv_blocks_free,
            predicted_outstanding_tokens=snapshot.predicted_outstanding_tokens,
            predicted_outstanding_work_s=snapshot.predicted_outstanding_work_s,
            num_steps=snapshot.num_steps,
            num_generated_tokens=snapshot.num_generated_tokens,
            scheduler_policy=snapshot.scheduler_policy,
            num_preemptions=snapshot.num_preemptions,
            num_swapped_out=snapshot.num_swapped_out,
            num_restored=snapshot.num_restored,
            num_restores_lost=snapshot.num_restores_lost,
            num_recomputed_tokens=snapshot.num_recomputed_tokens,
            num_draft_tokens=snapshot.spec.num_draft_tokens,
            num_accepted_draft_tokens=snapshot.spec.num_accepted_tokens,
            num_verifies=snapshot.spec.num_request_verifies,
            draft_acceptance_rate=snapshot.spec.acceptance_rate,
            mean_accepted_draft_tokens=snapshot.spec.mean_accepted_length,
            speculative_method=snapshot.speculative_method.value,
            num_live_requests=admission.num_live,
            max_live_requests=admission.limits.max_live_requests,
            num_live_prompt_tokens=admission.num_live_prompt_tokens,
            max_live_prompt_tokens=admission.limits.max_live_prompt_tokens,
            num_refused_queue_full=admission.num_rejected_full,
            num_refused_deadline=admission.num_rejected_deadline,
            seconds_per_output_token=snapshot.seconds_per_output_token,
            max_num_seqs=self._max_num_seqs,
        )

    async def GetModelInfo(self, request, context):
        info = self._info
        return engine_service_pb2.EngineServiceGetModelInfoResponse(
            model_name=info.model_name,
            max_context_tokens=info.max_model_len,
            vocab_size=info.vocab_size,
            eos_token_id=info.eos_token_id,  # None leaves the optional field unset, never a made-up id
            tokenizer=info.tokenizer,
            has_chat_template=info.has_chat_template,
        )


def _coalesce(event: EngineEvent, events: asyncio.Queue) -> tuple[list[int], EngineEvent]:
    """Merges events already queued for this request into one message (fewer, larger writes)."""
    token_ids = list(event.new_token_ids)
    while event.finish_reason is None and not events.empty():
        event = events.get_nowait()
        token_ids.extend(event.new_token_ids)
    return token_ids, event
