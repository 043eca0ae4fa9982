"""`alise bench spec`: prompt-set rules, side-by-side speedups, exactness counting, and one real run of
the whole command on the tiny random model over a tiny synthetic ShareGPT file (no ../shared/data needed)."""

from __future__ import annotations

import gzip
import json
import pathlib

import pytest

from services.bench.spec_prompts import PromptSetName, SpecPrompt, classify, select_prompt_sets
from services.bench.spec_report import GroupRecord, summarise
from services.bench.spec_run import GroupRun, SpecCounters
from services.engine.spec.method import SpeculativeMethod

OFF, NGRAM = SpeculativeMethod.OFF, SpeculativeMethod.NGRAM
CODE_PROMPT = (
    "Please fix the bug in this function so that it returns the sum:\n```python\ndef total(values):\n"
    "    result = 0\n    for value in values:\n        result = value\n    return result\n```\n"
)
REWRITE_PROMPT = "Rewrite this paragraph in a friendlier tone: " + "The committee postponed the vote again. " * 12
CHAT_PROMPT = "What are three good names for a small orange cat?"


def _record(record_id: str, prompt: str, num_llama2_tokens: int) -> dict:
    return {
        "id": record_id,
        "prompt": prompt,
        "response": "",
        "num_turns": 2,
        "is_conversation_start": True,
        "prompt_llama2_tokens": num_llama2_tokens,
        "response_llama2_tokens": 10,
    }


def _synthetic_records(num_per_set: int) -> list[dict]:
    records = []
    for index in range(num_per_set):
        records.append(_record(f"code{index}", CODE_PROMPT + f"# case {index}", 80))
        records.append(_record(f"rewrite{index}", REWRITE_PROMPT + f"({index})", 200))
        records.append(_record(f"chat{index}", CHAT_PROMPT + f" #{index}", 15))
    return records


def test_classify_follows_the_stated_rules():
    assert classify(CODE_PROMPT, 80) is PromptSetName.CODE_EDIT
    assert classify("Explain this code:\n```\nx = 1;\n```", 80) is None  # code, but no edit asked
    assert classify(REWRITE_PROMPT, 200) is PromptSetName.SUMMARISE_REWRITE
    assert classify(REWRITE_PROMPT, 100) is None  # too short to carry a text to rewrite
    assert classify("Here is our company profile; don't summarize it, just say okay. " * 5, 200) is None
    assert classify(CHAT_PROMPT, 15) is PromptSetName.OPEN_CHAT
    assert classify(CHAT_PROMPT, 3) is None  # below vLLM's 4-token minimum


def test_selection_is_seeded_and_fits_the_token_limit():
    from services.common.tokenizer import load_tokenizer

    tokenizer = load_tokenizer("default")
    records = _synthetic_records(6)
    first = select_prompt_sets(records, tokenizer, num_prompts=3, seed=1, max_prompt_tokens=512)
    again = select_prompt_sets(records, tokenizer, num_prompts=3, seed=1, max_prompt_tokens=512)
    assert first == again and list(first) == list(PromptSetName)
    assert all(len(prompts) == 3 for prompts in first.values())
    assert {p.prompt_id[:4] for p in first[PromptSetName.CODE_EDIT]} == {"code"}
    assert first[PromptSetName.OPEN_CHAT][0].token_ids[0] == tokenizer.bos_token_id  # no chat template: BOS + text
    with pytest.raises(ValueError, match="summarise-rewrite"):
        select_prompt_sets(records, tokenizer, num_prompts=3, seed=1, max_prompt_tokens=40)


def _run(
    tokens_per_s: float, outputs: dict[str, tuple[int, ...]], drafts: SpecCounters, tokens_per_cpu_s: float = 0.0
) -> GroupRun:
    num_tokens, cpu_rate = 100, tokens_per_cpu_s or tokens_per_s
    return GroupRun(outputs, 60, 50, num_tokens, num_tokens / tokens_per_s, num_tokens / cpu_rate, (0.01,), drafts)


def test_speedups_divide_by_off_of_the_same_repeat_and_mismatches_are_counted():
    """off runs at 10 then 20 tokens/s, ngram at 20 both times: side by side that is 2.0 then 1.0
    (median 1.5); a ratio of medians (20 / 15) or of pooled rates would give something else."""
    same, other = {"a": (1, 2, 3)}, {"a": (1, 2, 4)}
    no_drafts = SpecCounters(0, 0, 0)
    records = [
        GroupRecord(0, PromptSetName.OPEN_CHAT, 1, 0, OFF, _run(10.0, same, no_drafts)),
        GroupRecord(0, PromptSetName.OPEN_CHAT, 1, 0, NGRAM, _run(20.0, same, SpecCounters(40, 30, 20))),
        GroupRecord(1, PromptSetName.OPEN_CHAT, 1, 0, OFF, _run(20.0, same, no_drafts)),
        GroupRecord(1, PromptSetName.OPEN_CHAT, 1, 0, NGRAM, _run(20.0, other, SpecCounters(40, 10, 20))),
    ]
    report = summarise(records, (OFF, NGRAM))
    cell = report["cells"]["open-chat"]["1"]["ngram"]
    assert cell["speedup_over_off_by_repeat"] == pytest.approx([2.0, 1.0])
    assert cell["speedup_over_off"] == pytest.approx({"median": 1.5, "min": 1.0, "max": 2.0})
    assert cell["acceptance_rate"] == pytest.approx(40 / 80)
    assert cell["mean_accepted_per_verify"] == pytest.approx(40 / 40)
    assert cell["drafts_per_step"] == pytest.approx(80 / 120)
    assert report["cells"]["open-chat"]["1"]["off"]["speedup_over_off"]["median"] == pytest.approx(1.0)
    mismatches = report["exactness"]["ngram"]
    assert (mismatches["num_compared"], mismatches["num_mismatched"]) == (2, 1)
    assert mismatches["mismatches"][0]["first_mismatch_index"] == 2
    assert report["off_reproducibility"] == {"num_compared": 1, "num_mismatched": 0}
    assert report["goals"]["ngram_open_chat_batch1"]["met"] is True
    assert report["goals"]["ngram_summarise_rewrite_batch1"]["measured"] is None


def test_a_goal_is_met_only_when_wall_and_cpu_time_both_reach_it():
    """n-gram reads 2x on the wall clock (off was slowed by other jobs) but 1.1x on CPU time: not met."""
    outputs, no_drafts = {"a": (1, 2)}, SpecCounters(0, 0, 0)
    records = [
        GroupRecord(0, PromptSetName.SUMMARISE_REWRITE, 1, 0, OFF, _run(10.0, outputs, no_drafts, 20.0)),
        GroupRecord(0, PromptSetName.SUMMARISE_REWRITE, 1, 0, NGRAM, _run(20.0, outputs, no_drafts, 22.0)),
    ]
    goal = summarise(records, (OFF, NGRAM))["goals"]["ngram_summarise_rewrite_batch1"]
    assert goal["measured"] == pytest.approx(2.0) and goal["measured_cpu_time"] == pytest.approx(1.1)
    assert (goal["met_wall_time"], goal["met_cpu_time"], goal["met"]) == (True, False, False)


def test_groups_cover_num_prompts_and_wrap_for_a_large_batch():
    from services.bench.spec_bench import groups_of

    pool = [SpecPrompt(str(i), PromptSetName.OPEN_CHAT, (1, 2)) for i in range(4)]
    assert [[p.prompt_id for p in g] for g in groups_of(pool, 1, 3)] == [["0"], ["1"], ["2"]]
    assert [[p.prompt_id for p in g] for g in groups_of(pool, 3, 4)] == [["0", "1", "2"], ["3", "0", "1"]]


def test_bench_spec_runs_end_to_end_on_the_tiny_model(tmp_path: pathlib.Path, capsys):
    from services.cli.main import main

    data = tmp_path / "data" / "sharegpt"
    data.mkdir(parents=True)
    with gzip.open(data / "sharegpt_v3_first_turn.dev.jsonl.gz", "wt", encoding="utf-8") as lines:
        for record in _synthetic_records(2):
            lines.write(json.dumps(record) + "\n")
    out = tmp_path / "spec.json"
    argv = ["bench", "spec", "--model", "dummy-llama-tiny", "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    argv += ["--num-prompts", "1", "--batch-sizes", "1,2", "--max-tokens", "6", "--repeats", "2"]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert report["benchmark"] == "spec" and report["config"]["model"] == "dummy-llama-tiny"
    assert set(report["cells"]) == {name.value for name in PromptSetName}
    methods = [method.value for method in SpeculativeMethod]
    for batches in report["cells"].values():
        assert list(batches) == ["1", "2"]
        for cell in batches.values():
            assert list(cell) == methods
            assert cell["off"]["speedup_over_off_by_repeat"] == [1.0, 1.0]
            for figures in cell.values():
                assert len(figures["speedup_over_off_by_repeat"]) == 2
                assert figures["decode_tokens_per_s"]["median"] > 0 and figures["num_requests"] > 0
    assert report["cells"]["open-chat"]["2"]["off"]["num_requests"] == 2 * 2  # batch 2 x 2 repeats
    assert set(report["exactness"]) == {"ngram", "early-exit"}
    assert len(report["groups"]) == 3 * 2 * 3 * 2  # sets x batch sizes (1 group each) x methods x repeats
    assert report["off_reproducibility"]["num_mismatched"] == 0 and report["run"]["num_repeats_started"] == 2
    assert report["run"]["torch_threads"] == 1 and report["run"]["engines"]["early-exit"]["early_exit_layer"] >= 1
    assert set(report["goals"]) == {
        "ngram_summarise_rewrite_batch1",
        "ngram_open_chat_batch1",
        "early_exit_best_set_batch1",
        *(f"ngram_{name.value.replace('-', '_')}_batch16" for name in PromptSetName),
    }
    assert report["goals"]["ngram_open_chat_batch16"]["measured"] is None  # batch 16 not run
    whole = report["cells"]["open-chat"]["2"]["ngram"]
    assert whole["group_tokens_per_cpu_s"]["median"] > 0 and whole["group_cpu_s"] >= whole["decode_cpu_s"]
    assert "exactness ngram:" in capsys.readouterr().out


def test_bench_spec_refuses_methods_without_off_first(tmp_path: pathlib.Path, capsys):
    from services.cli.main import main

    argv = ["bench", "spec", "--methods", "ngram,off", "--out", str(tmp_path / "x.json")]
    assert main(argv) == 2
    assert "alise bench spec: error: methods must start with off" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_sweep_interleaves_every_method_per_group_in_rotated_order(monkeypatch):
    from services.bench import spec_bench
    from services.engine.spec.ngram_drafter import NgramConfig

    calls = []

    def fake_run_group(core, prompts, max_tokens, tag):
        calls.append((core, tag))
        return _run(10.0, {p.prompt_id: (1,) for p in prompts}, SpecCounters(0, 0, 0))

    def fake_run_groups(cores, prompts, max_tokens, tag):  # the methods stepped in turn, in the dict's order
        return {method: fake_run_group(core, prompts, max_tokens, tag) for method, core in cores.items()}

    monkeypatch.setattr(spec_bench, "run_group", fake_run_group)
    monkeypatch.setattr(spec_bench, "run_groups", fake_run_groups)
    methods = tuple(SpeculativeMethod)
    config = spec_bench.SpecBenchConfig(
        "dummy-llama-tiny", spec_bench.Dtype.AUTO, methods, (1,), 2, 4, 2, 2, NgramConfig(), 0, 64, 0, None
    )
    pool = [SpecPrompt(str(i), PromptSetName.OPEN_CHAT, (1, 2)) for i in range(2)]
    records = spec_bench.run_sweep(config, {PromptSetName.OPEN_CHAT: pool}, {m: m for m in methods})
    measured = [core for core, tag in calls if not tag.startswith("warmup")]
    assert [r.method for r in records] == measured
    assert measured == [
        *methods,  # repeat 0, group 0
        *methods[1:], methods[0],  # repeat 0, group 1: rotated by one
        *methods[1:], methods[0],  # repeat 1, group 0
        *methods[2:], *methods[:2],  # repeat 1, group 1
    ]  # fmt: skip
    assert [(r.repeat, r.group_index) for r in records[::3]] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_a_bench_method_may_carry_its_own_k():
    from services.bench.spec_report import BenchMethod, goals

    variant = BenchMethod("ngram:16")
    assert (variant.method, variant.num_speculative_tokens, variant.value) == (SpeculativeMethod.NGRAM, 16, "ngram:16")
    plain = BenchMethod("ngram")
    assert plain == SpeculativeMethod.NGRAM and hash(plain) == hash(SpeculativeMethod.NGRAM)
    assert plain.num_speculative_tokens is None
    for bad in ("ngram:0", "ngram:x", "beam", "off:"):
        with pytest.raises(ValueError):
            BenchMethod(bad)
    cells = {"summarise-rewrite": {"1": {"ngram:16": {"speedup_over_off": {"median": 1.7},
                                                      "speedup_over_off_cpu_time": {"median": 1.65}}}}}  # fmt: skip
    found = goals(cells, (BenchMethod("off"), plain, variant))
    assert found["ngram_summarise_rewrite_batch1[ngram:16]"]["met"] is True
    assert found["ngram_summarise_rewrite_batch1"]["measured"] is None  # the plain method was not in these cells
