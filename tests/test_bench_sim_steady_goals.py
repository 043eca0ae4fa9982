"""Issue 19's goals read off steady-state reports: paired per-seed differences, merged alise variants."""

from __future__ import annotations

import json
import pathlib

import pytest

from services.bench.sim import steady_goals

# seed -> policy -> (share missing the SLO, p99 normalized s/token, p99 TTFT s)
FIGURES = {
    0: {"fcfs": (0.20, 0.100, 3.0), "alise": (0.05, 0.030, 2.0), "srpt-oracle": (0.04, 0.020, 2.5)},
    1: {"fcfs": (0.10, 0.080, 2.0), "alise": (0.03, 0.020, 1.5), "srpt-oracle": (0.02, 0.015, 1.0)},
    2: {"fcfs": (0.30, 0.200, 5.0), "alise": (0.06, 0.050, 4.0), "srpt-oracle": (0.05, 0.030, 3.0)},
}


def _report(path: pathlib.Path, policies: tuple[str, ...], *, rate: float = 20.0, shift: float = 0.0) -> pathlib.Path:
    runs = [
        {
            "policy": policy,
            "burstiness": 0.25,
            "load_fraction": 0.95,
            "seed": seed,
            "rate_per_s": rate,
            "metrics": {
                "slo_attainment": 1.0 - by_policy[policy][0] - shift,
                "p99_normalized_latency_s_per_token": by_policy[policy][1],
                "p99_ttft_s": by_policy[policy][2],
            },
        }
        for seed, by_policy in FIGURES.items()
        for policy in policies
    ]
    path.write_text(json.dumps({"result": {"runs": runs}}))
    return path


def test_goals_are_paired_per_seed_differences(tmp_path: pathlib.Path) -> None:
    runs = steady_goals.read_runs(_report(tmp_path / "base.json", ("fcfs", "alise", "srpt-oracle")))
    keys = [(policy, 0.25, "0.95") for policy in ("fcfs", "alise", "srpt-oracle")]
    excess = steady_goals.paired(runs, keys[1], keys[2], steady_goals._miss, 1.1)
    assert excess.mean == pytest.approx(100 * ((0.05 - 0.044) + (0.03 - 0.022) + (0.06 - 0.055)) / 3)
    margin = steady_goals.gain_vs_goal(runs, *keys, "p99_normalized_latency_s_per_token")
    assert margin.mean == pytest.approx(((0.07 - 0.072) + (0.06 - 0.0585) + (0.15 - 0.153)) / 3)
    assert margin.num_samples == 3 and margin.half_width > 0
    row = steady_goals.goal_rows(runs, "alise", 0.25, "0.95")
    assert row[:4] == ["gamma CV 2", "95%", "3", "alise"]
    assert row[5] == f"{(0.14 / 3) / (0.11 / 3):.2f}x"
    assert row[7] == f"{(0.28 / 3) / (0.315 / 3):.0%}"


def test_other_predictions_merge_only_on_the_same_arrivals(tmp_path: pathlib.Path) -> None:
    base = steady_goals.read_runs(_report(tmp_path / "base.json", ("fcfs", "alise", "srpt-oracle")))
    other = steady_goals.read_runs(_report(tmp_path / "o.json", ("alise",), shift=0.01), policy_label={"alise": "o"})
    merged = steady_goals.merge(base, other)
    assert ("o", 0.25, "0.95") in merged and ("alise", 0.25, "0.95") in merged
    assert "| gamma CV 2 | 95% | 3 | o |" in steady_goals.goal_table(merged, ["alise", "o"])
    moved = steady_goals.read_runs(_report(tmp_path / "m.json", ("alise",), rate=20.5), policy_label={"alise": "m"})
    with pytest.raises(ValueError, match="not the base's"):
        steady_goals.merge(base, moved)


def test_more_seeds_unite_and_a_seed_twice_is_refused(tmp_path: pathlib.Path) -> None:
    policies = ("fcfs", "alise", "srpt-oracle")
    base = steady_goals.read_runs(_report(tmp_path / "base.json", policies))
    later = json.loads(_report(tmp_path / "later.json", policies).read_text())
    for run in later["result"]["runs"]:
        run["seed"] += 10
    (tmp_path / "later.json").write_text(json.dumps(later))
    merged = steady_goals.merge(base, steady_goals.read_runs(tmp_path / "later.json"))
    assert sorted(merged[("alise", 0.25, "0.95")]) == [0, 1, 2, 10, 11, 12]
    assert steady_goals.goal_rows(merged, "alise", 0.25, "0.95")[2] == "6"
    with pytest.raises(ValueError, match="in two reports"):
        steady_goals.merge(merged, base)


def test_an_oracle_report_replaces_the_bases_oracle_runs(tmp_path: pathlib.Path) -> None:
    base = steady_goals.read_runs(_report(tmp_path / "base.json", ("fcfs", "alise", "srpt-oracle")))
    other = _report(tmp_path / "oracle.json", ("srpt-oracle", "alise"), shift=0.01)  # its alise runs are ignored
    replaced = steady_goals._replace_oracle(base, [other])
    oracle = replaced[("srpt-oracle", 0.25, "0.95")]
    assert sorted(oracle) == [0, 1, 2] and oracle[0]["metrics"]["slo_attainment"] == pytest.approx(1 - 0.04 - 0.01)
    assert replaced[("alise", 0.25, "0.95")] == base[("alise", 0.25, "0.95")]
    with pytest.raises(ValueError, match="not the base's"):
        steady_goals._replace_oracle(base, [_report(tmp_path / "moved.json", ("srpt-oracle",), rate=20.5)])


def test_the_same_rate_from_another_place_in_loads_is_other_arrivals_and_refused(tmp_path: pathlib.Path) -> None:
    """The arrivals' seed is seed * 1000 + the load's index in --loads (steady_sweep.arrival_seed): a run of
    --loads 0.95 alone is not on the arrivals of the 95% point of --loads 0.8,0.9,0.95,1 though the rates match."""
    base_path = _report(tmp_path / "base.json", ("fcfs", "alise", "srpt-oracle"))
    report = json.loads(base_path.read_text())
    report["config"] = {"steady": {"load_fractions": [0.8, 0.9, 0.95, 1.0]}}
    base_path.write_text(json.dumps(report))
    base = steady_goals.read_runs(base_path)
    assert base[("alise", 0.25, "0.95")][1]["arrival_seed"] == 1002
    alone = _report(tmp_path / "alone.json", ("alise",))
    report = json.loads(alone.read_text())
    report["config"] = {"steady": {"load_fractions": [0.95]}}
    alone.write_text(json.dumps(report))
    with pytest.raises(ValueError, match="arrival seed 0 is not the base's 2"):
        steady_goals.merge(base, steady_goals.read_runs(alone, policy_label={"alise": "o"}))
    report["config"] = {"steady": {"load_fractions": [0.8, 0.9, 0.95, 1.0]}}
    alone.write_text(json.dumps(report))
    assert ("o", 0.25, "0.95") in steady_goals.merge(base, steady_goals.read_runs(alone, policy_label={"alise": "o"}))


def test_an_alise_report_contributes_only_its_alise_runs(tmp_path: pathlib.Path) -> None:
    base = _report(tmp_path / "base.json", ("fcfs", "alise", "srpt-oracle"))
    both = _report(tmp_path / "both.json", ("alise", "srpt-oracle"), shift=0.01)  # the oracle ran beside it
    out = tmp_path / "goals.md"
    assert steady_goals.main([str(base), "--alise", f"o={both}", "--out", str(out)]) == 0
    assert "| gamma CV 2 | 95% | 3 | o |" in out.read_text()
