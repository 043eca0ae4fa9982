"""Each admitted request's TTFT split into its parts, from the client's times and the engine's step trace.

    client call --way in--> engine arrival --queue--> first scheduled step --first step(s)--> first token
                                                                                    --way out--> client
    way in      the gateway (check, tokenize, route, the engine call) and both event loops
    queue       the wait for a place: num_steps_waited steps ended meanwhile
    first step  its prefill, in a batch of first_step_batch_size requests and first_step_num_tokens tokens
    way out     engine -> gateway -> client

All times are CLOCK_MONOTONIC (one clock for the client and the engine process), so the parts add up
to the client's TTFT exactly. `arrival_phase` is where in the step under way the request arrived
(0: as a step began, 1: as it ended; None: the engine was between steps): at 1x arrivals land
anywhere in a step, and a request admitted as a place frees arrives at a phase the admission decides.
`num_new_in_first_step` counts the requests first scheduled in the same step (a cohort of prefills
makes that step longer). The summary gives each part's p50/p90/p99, and the tail's composition: the
mean of each part over the requests whose client TTFT is at or above the level's p90.
"""

from __future__ import annotations

import bisect
import statistics
from dataclasses import asdict, dataclass

from services.bench.chaos_contention import nearest_rank_percentile
from services.bench.chaos_load import StreamOutcome
from services.bench.overload_step_trace import StepTrace

STEP_STARTED, STEP_ENDED, STEP_RUNNING, STEP_WAITING, STEP_TOKENS, STEP_SAMPLED, STEP_FINISHED = range(7)


@dataclass(frozen=True)
class TtftSplit:
    """One admitted request's TTFT in parts (seconds; they sum to ttft_s)."""

    ttft_s: float  # client call -> first token at the client
    way_in_s: float  # client call -> arrival at the engine
    queue_s: float  # arrival -> the step that first computed it began scheduling
    first_steps_s: float  # that moment -> its first token (the engine's step(s))
    way_out_s: float  # first token at the engine -> at the client
    num_steps_waited: int  # steps that ended between its arrival and its first scheduled step
    arrival_phase: float | None  # fraction of the step under way at arrival that had passed (None: between steps)
    num_steps_to_first_token: int  # steps from its first scheduled one to its first token, both counted
    first_step_duration_s: float  # the wall time of its first scheduled step
    first_step_batch_size: int  # requests that ran in that step
    first_step_num_tokens: int  # tokens that step fed the model
    num_new_in_first_step: int  # requests first scheduled in that step (itself included)


def split_outcomes(outcomes: list[StreamOutcome], trace: StepTrace) -> tuple[list[TtftSplit], int]:
    """The splits of the admitted outcomes found in the trace, and how many admitted ones were not found."""
    by_timings = trace.by_timings()
    starts = [step[STEP_STARTED] for step in trace.steps]
    new_per_step: dict[int, int] = {}
    for request in trace.requests.values():
        new_per_step[request.first_scheduled_step] = new_per_step.get(request.first_scheduled_step, 0) + 1
    splits, num_missing = [], 0
    for outcome in outcomes:
        if outcome.code != "OK" or outcome.first_token_s is None or outcome.engine_ttft_s is None:
            continue
        request = by_timings.get((outcome.engine_queue_s, outcome.engine_ttft_s))
        if request is None or request.first_token_step is None or request.first_token_s is None:
            num_missing += 1
            continue
        first, token_step = request.first_scheduled_step, request.first_token_step
        step = trace.steps[first]
        waited = [s for s in trace.steps[:first] if s[STEP_ENDED] > request.arrival_s]
        splits.append(
            TtftSplit(
                ttft_s=outcome.first_token_s - outcome.started_s,
                way_in_s=request.arrival_s - outcome.started_s,
                queue_s=request.first_scheduled_s - request.arrival_s,
                first_steps_s=request.first_token_s - request.first_scheduled_s,
                way_out_s=outcome.first_token_s - request.first_token_s,
                num_steps_waited=len(waited),
                arrival_phase=_phase(trace.steps, starts, request.arrival_s),
                num_steps_to_first_token=token_step - first + 1,
                first_step_duration_s=step[STEP_ENDED] - step[STEP_STARTED],
                first_step_batch_size=int(step[STEP_RUNNING] + step[STEP_FINISHED]),
                first_step_num_tokens=int(step[STEP_TOKENS]),
                num_new_in_first_step=new_per_step.get(first, 1),
            )
        )
    return splits, num_missing


def _phase(steps: list[list[float]], starts: list[float], at_s: float) -> float | None:
    """Fraction of the step running at `at_s` that had passed then; None when no step was running."""
    index = bisect.bisect_right(starts, at_s) - 1
    if index < 0:
        return None
    started_s, ended_s = steps[index][STEP_STARTED], steps[index][STEP_ENDED]
    if at_s >= ended_s or ended_s <= started_s:
        return None
    return (at_s - started_s) / (ended_s - started_s)


NUMERIC_PARTS = (
    "ttft_s",
    "way_in_s",
    "queue_s",
    "first_steps_s",
    "way_out_s",
    "num_steps_waited",
    "num_steps_to_first_token",
    "first_step_duration_s",
    "first_step_batch_size",
    "first_step_num_tokens",
    "num_new_in_first_step",
)


def summarize_splits(splits: list[TtftSplit], trace: StepTrace, began_s: float, ended_s: float) -> dict:
    """JSON-ready: p50/p90/p99 of every part, the tail's mean parts (TTFT >= p90), and the level's steps."""
    if not splits:
        return {"num_split": 0}
    summary: dict = {"num_split": len(splits)}
    for part in NUMERIC_PARTS:
        values = [float(getattr(split, part)) for split in splits]
        summary[part] = {
            q: round(nearest_rank_percentile(values, f), 5) for q, f in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        }
    phases = [split.arrival_phase for split in splits if split.arrival_phase is not None]
    summary["arrival_phase_mean"] = round(statistics.fmean(phases), 3) if phases else None
    summary["share_arrived_between_steps"] = round(1 - len(phases) / len(splits), 3)
    p90_s = nearest_rank_percentile([split.ttft_s for split in splits], 0.9)
    tail = [asdict(split) for split in splits if split.ttft_s >= p90_s]
    summary["tail_mean"] = {part: round(statistics.fmean(float(t[part]) for t in tail), 5) for part in NUMERIC_PARTS}
    summary["tail_mean"]["num_requests"] = len(tail)
    summary["steps"] = _step_summary([s for s in trace.steps if began_s <= s[STEP_STARTED] <= ended_s])
    return summary


def _step_summary(steps: list[list[float]]) -> dict:
    """The level's steps: how many, their duration and batch (p50/p90), and the engine's busy share."""
    if not steps:
        return {"num_steps": 0}
    durations = [s[STEP_ENDED] - s[STEP_STARTED] for s in steps]
    wall_s = steps[-1][STEP_ENDED] - steps[0][STEP_STARTED]
    batch_sizes = [s[STEP_RUNNING] + s[STEP_FINISHED] for s in steps]
    full = [duration for duration, size in zip(durations, batch_sizes) if size == max(batch_sizes)]
    return {
        "num_steps": len(steps),
        "duration_p50_s": round(nearest_rank_percentile(durations, 0.5), 5),
        "duration_p90_s": round(nearest_rank_percentile(durations, 0.9), 5),
        "batch_size_p50": nearest_rank_percentile(batch_sizes, 0.5),
        "num_waiting_p50": nearest_rank_percentile([s[STEP_WAITING] for s in steps], 0.5),
        "num_waiting_p90": nearest_rank_percentile([s[STEP_WAITING] for s in steps], 0.9),
        # steps of the largest batch seen (the full batch at 20x; at 1x the same size where it happened):
        # their duration at both levels tells the refusals' CPU apart from the batch's own size
        "max_batch_size": max(batch_sizes),
        "max_batch_duration_p50_s": round(nearest_rank_percentile(full, 0.5), 5),
        "max_batch_duration_p90_s": round(nearest_rank_percentile(full, 0.9), 5),
        "busy_share": round(sum(durations) / wall_s, 3) if wall_s > 0 else None,
    }
