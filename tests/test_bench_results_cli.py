"""save_cli_report: a bench main's --output report, with every other flag as its config."""

from __future__ import annotations

import argparse
import json

from services.bench.results import save_cli_report


def test_saves_the_flags_but_output_as_config_and_skips_without_output(tmp_path, capsys) -> None:
    path = tmp_path / "sub" / "report.json"
    args = argparse.Namespace(output=path, rounds=2, duration_s=1.5)
    assert save_cli_report(args, "some_bench", {"runs": [1, 2]}) == path
    report = json.loads(path.read_text())
    assert report["benchmark"] == "some_bench" and report["runs"] == [1, 2]
    assert report["config"] == {"rounds": 2, "duration_s": 1.5}
    assert f"saved {path}" in capsys.readouterr().out
    assert save_cli_report(argparse.Namespace(output=None, rounds=1), "some_bench", {}) is None
    assert capsys.readouterr().out == ""
