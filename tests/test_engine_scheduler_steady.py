"""The steady decode step (scheduler/steady.py): decode columns must give exactly what the general
path gives (chunks, allocations, preemptions, finishes, results), and must engage when it can."""

import random

from services.engine.request import FinishReason, RequestStatus
from services.engine.scheduler import SchedulerOutput
from services.engine.scheduler.output import SampledTokens
from tests.engine_factories import EOS, make_request, make_scheduler


def _token(request_id: str, num_output: int, eos_every: int) -> int:
    """Deterministic per (request, output index), so both schedulers see the same tokens."""
    value = hash((request_id, num_output)) % 1000
    return EOS if value % eos_every == 0 else 3 + value % 50


def _sampled(output: SchedulerOutput, eos_every: int, columnar: bool):
    """What the model runner returns: SampledTokens over the decode columns (as ModelRunner.sample), or a dict."""
    chunks = output.tail if output.decodes is not None else output.chunks
    others = {
        c.request.request_id: _token(c.request.request_id, len(c.request.output_token_ids), eos_every)
        for c in chunks
        if c.samples_token
    }
    if output.decodes is None:
        return others
    decode_tokens = [_token(r.request_id, len(r.output_token_ids), eos_every) for r in output.decodes.requests]
    if columnar:
        return SampledTokens(output.decodes.request_ids, decode_tokens, others)
    return dict(zip(output.decodes.request_ids, decode_tokens)) | others


def _view(output: SchedulerOutput) -> list:
    return [
        (c.request.request_id, c.num_new_tokens, c.samples_token, c.num_context_tokens, c.num_draft_tokens)
        for c in output.chunks
    ] + [tuple(output.preempted_request_ids)]


def _drive(steady: bool, seed: int, num_steps: int = 250) -> tuple[list, int]:
    """A random workload on a small pool (KV shortage, preemption by recompute, EOS, max_tokens and
    model-length finishes, aborts between steps); every step's chunks, results and block tables."""
    rng = random.Random(seed)
    scheduler = make_scheduler(num_blocks=28, block_size=4, max_num_seqs=12, token_budget=24, max_model_len=48)
    scheduler.steady.min_decodes = 1  # columns at every size here (the default leaves small batches alone)
    if not steady:
        scheduler.steady.schedule = lambda _scheduler: None  # type: ignore[method-assign]
    trace, num_columnar, next_id = [], 0, 0
    for step in range(num_steps):
        if rng.random() < 0.15:
            scheduler.add(make_request(f"r{next_id}", rng.randint(1, 20), max_tokens=rng.randint(1, 40)))
            next_id += 1
        if rng.random() < 0.03 and scheduler.running:
            scheduler.abort(rng.choice(scheduler.running).request_id)
        output = scheduler.schedule()
        num_columnar += output.decodes is not None
        results = scheduler.update(output, _sampled(output, eos_every=97, columnar=step % 3 != 0))
        tables = {r.request_id: list(scheduler.kv.block_table(r.request_id)) for r in scheduler.running}
        finished = list(scheduler.finished_request_ids)
        trace.append((_view(output), [tuple(r) for r in results], tables, finished, output.num_scheduled_tokens))
    return trace, num_columnar


def test_decode_columns_give_exactly_the_general_paths_steps():
    for seed in range(4):
        columnar, num_columnar = _drive(True, seed)
        general, num_general = _drive(False, seed)
        assert num_general == 0 and num_columnar > 50  # the columns were used, and checked against the general path
        for step, (got, want) in enumerate(zip(columnar, general, strict=True)):
            assert got == want, f"seed {seed}, step {step}"


def test_steady_decodes_append_tokens_and_finish_at_max_tokens():
    scheduler = make_scheduler(token_budget=64, max_num_seqs=8)
    scheduler.steady.min_decodes = 1
    for index in range(4):
        scheduler.add(make_request(f"d{index}", 5, max_tokens=4 + index))
    scheduler.update(output := scheduler.schedule(), _sampled(output, 10**9, True))  # prefills
    for step in range(1, 4):
        output = scheduler.schedule()
        assert output.decodes is not None and not output.tail and output.num_scheduled_tokens == 4
        assert output.decodes.seq_lens_list == [5 + step] * 4
        results = scheduler.update(output, _sampled(output, 10**9, True))
        assert [r.request_id for r in results] == ["d0", "d1", "d2", "d3"]
    assert results[0].finish_reason is FinishReason.LENGTH and scheduler.finished_request_ids == ["d0"]
    assert [len(r.output_token_ids) for r in scheduler.running] == [4, 4, 4]
    assert all(r.num_computed_tokens == 8 for r in scheduler.running)
    assert [c.num_context_tokens for c in scheduler.schedule().chunks] == [9, 9, 9]  # materialised on read


def test_a_request_aborted_while_the_step_ran_gets_no_result():
    scheduler = make_scheduler()
    scheduler.steady.min_decodes = 1
    for index in range(3):
        scheduler.add(make_request(f"d{index}", 3, max_tokens=20))
    scheduler.update(output := scheduler.schedule(), _sampled(output, 10**9, True))
    output = scheduler.schedule()
    assert output.decodes is not None
    sampled = _sampled(output, 10**9, True)
    aborted = scheduler.abort("d1")
    results = scheduler.update(output, sampled)
    assert [r.request_id for r in results] == ["d0", "d2"]
    assert aborted is not None and aborted.status is RequestStatus.FINISHED and len(aborted.output_token_ids) == 1
    assert [r.num_computed_tokens for r in scheduler.running] == [4, 4]


def test_sampled_tokens_read_as_a_dict():
    tokens = SampledTokens(["a", "b"], [5, 6], {"c": 7})
    assert len(tokens) == 3 and tokens["b"] == 6 and tokens["c"] == 7
    assert dict(tokens) == {"a": 5, "b": 6, "c": 7} and tokens == {"a": 5, "b": 6, "c": 7}


def test_small_batches_take_the_general_path():
    scheduler = make_scheduler(token_budget=64, max_num_seqs=8)
    scheduler.add(make_request("a", 3, max_tokens=20))
    scheduler.update(output := scheduler.schedule(), _sampled(output, 10**9, True))
    assert scheduler.schedule().decodes is None  # one decode: below MIN_COLUMN_DECODES


def test_draft_slots_are_looked_for_only_where_a_speculator_may_set_them():
    """A scheduler looks for draft slots before taking the columns (a request holding some takes the general
    path); an engine core without a speculator tells its scheduler no request can hold any."""
    from services.engine.engine_core import EngineCore

    scheduler = make_scheduler(token_budget=256, max_num_seqs=64, num_blocks=512)
    scheduler.steady.min_decodes = 2
    for index in range(4):
        scheduler.add(make_request(f"r{index}", 3, max_tokens=50))
    scheduler.update(output := scheduler.schedule(), _sampled(output, 10**9, True))
    scheduler.running[0].num_draft_slots, scheduler.running[0].draft_token_ids = 2, [5, 6]
    assert scheduler.drafts_possible and scheduler.schedule().decodes is None
    EngineCore(scheduler, runner=None)  # type: ignore[arg-type]
    assert not scheduler.drafts_possible
