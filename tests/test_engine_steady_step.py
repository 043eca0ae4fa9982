"""The whole steady decode step (scheduler columns, in-place staging, one-argmax sampling, column results
streamed by the engine loop) gives exactly what the general path gives, on the real tiny model.

The general path is the one the Hugging Face comparisons check (test_engine_matches_hf_generate.py);
here 40 requests, enough for the columns, run once with the steady path and once with it turned off,
with late arrivals (prefills between steady steps), greedy and seeded sampled rows, and finishes at
different lengths.
"""

from __future__ import annotations

import asyncio

from services.engine.engine_loop import EngineLoop
from services.engine.request import FinishReason, SamplingOptions
from tests.engine_model import greedy, make_core, new_request, run_to_completion

NUM_REQUESTS = 40


def _options(index: int) -> SamplingOptions:
    if index % 7 == 3:  # some seeded sampled rows among the greedy ones
        return SamplingOptions(max_tokens=25, temperature=0.8, top_p=0.9, top_k=20, seed=index, ignore_eos=True)
    return greedy(12 if index % 10 == 0 else 32)


def _arrivals() -> dict[int, list]:
    arrivals: dict[int, list] = {}
    for index in range(NUM_REQUESTS):
        prompt = [3 + (index * 7 + j) % 500 for j in range(2 + index % 9)]
        step = 0 if index < 37 else 6 + 7 * (index - 37)
        arrivals.setdefault(step, []).append(new_request(f"r{index}", prompt, _options(index)))
    return arrivals


def _core(steady: bool):
    core = make_core(num_blocks=400, block_size=8, token_budget=256, max_num_seqs=48)
    if not steady:
        core.scheduler.steady.min_decodes = 10**9  # every step through the general path
    return core


def test_the_steady_path_gives_the_general_paths_tokens():
    steady, general = _core(True), _core(False)
    staging, advanced = steady.runner.batch._steady, []
    advance = staging._advance
    staging._advance = lambda *args: (advanced.append(1), advance(*args))
    got = run_to_completion(steady, _arrivals())
    assert got == run_to_completion(general, _arrivals())
    assert len(got) == NUM_REQUESTS and len(got["r0"]) == 12 and len(got["r3"]) == 25
    assert len(advanced) > 10, "steady steps were meant to advance the staging buffer in place"


async def test_the_engine_loop_streams_column_results_once_each_in_order():
    engine = EngineLoop(_core(True), engine_id="steady")
    arrivals = _arrivals()
    requests = [request for step in sorted(arrivals) for request in arrivals[step]]
    engine.start(asyncio.get_running_loop())
    try:
        queues = {request: engine.submit(request) for request in requests}
        for request, events in queues.items():
            tokens: list[int] = []
            while True:
                event = await asyncio.wait_for(events.get(), 60.0)
                tokens.extend(event.new_token_ids)
                if event.finish_reason is not None:
                    assert event.finish_reason is FinishReason.LENGTH and event.timings is not None
                    break
            assert tokens == request.output_token_ids  # each token streamed once, in order
            assert len(tokens) == request.sampling.max_tokens and events.empty()
    finally:
        await asyncio.to_thread(engine.stop)
