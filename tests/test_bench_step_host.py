"""`alise bench step`'s direct host measurement: the null-operator engine path really steps requests,
and the side-by-side worker measures the engine tree it is given (not whatever is importable)."""

import subprocess

import pytest
import torch

from services.bench import step_direct
from services.bench.step_host import CHUNK_TOKENS, HostPath


def test_the_null_operator_path_runs_the_engine_core_over_real_requests():
    torch.set_num_threads(1)
    path = HostPath(4, True, "fcfs", seed=0, num_steps=6)
    assert path.runner.decoder.layers == []  # no layer: a forward is embedding, final norm and LM head
    decodes = [r for r in path.scheduler.running if r.request_id.startswith("d")]
    assert len(decodes) == 4 and all(r.num_uncomputed_tokens == 1 for r in decodes)  # prompts prefilled
    before = [r.num_output_tokens for r in decodes]
    thread_ns, wall_ns = path.step_ns()
    assert thread_ns > 0 and wall_ns > 0
    phases = path.phases_ns()
    assert set(phases) == {"schedule", "prepare", "launch", "sample", "update"}
    assert [r.num_output_tokens for r in decodes] == [n + 2 for n in before]  # one token per step each
    # Each step's chunk request got its whole prompt in that step and finished at its first token.
    assert path.num_chunks == 2 and not [r for r in path.scheduler.requests if r.startswith("c")]
    assert CHUNK_TOKENS == 2048
    assert path.null_operators_ns() > 0


def test_workloads_give_every_decode_count_to_the_first_policy_and_the_largest_to_the_others():
    config = step_direct.DirectConfig((1, 256), ("alise", "fcfs"), 2, 0, 1, 0, None)
    assert step_direct.workloads(config) == [
        (1, False, "alise"),
        (1, True, "alise"),
        (256, False, "alise"),
        (256, True, "alise"),
        (256, False, "fcfs"),
        (256, True, "fcfs"),
    ]


def test_the_worker_measures_the_engine_of_the_extracted_commit(tmp_path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=step_direct.REPO_ROOT)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    tree = step_direct.extract_tree(head.stdout.strip(), tmp_path)
    config = step_direct.DirectConfig((2,), ("fcfs",), 2, 0, 1, 0, None)
    answer = step_direct.run_worker(tree, config)
    assert answer["engine_dir"].startswith(str(tmp_path))
    rows = answer["rows"]
    assert [(r["num_decodes"], r["chunk_tokens"]) for r in rows] == [(2, 0), (2, CHUNK_TOKENS)]
    assert all(len(r["step_thread_ns"]) == 2 and min(r["step_thread_ns"]) > 0 for r in rows)
    summary = step_direct.summarize({"before": [answer]})
    assert [s["path"] for s in summary] == ["before", "before"] and summary[0]["host_ms"] > 0


def test_an_unknown_baseline_commit_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot extract commit"):
        step_direct.extract_tree("0" * 40, tmp_path)
