"""Markdown tables from `alise predictor eval` JSON files, models side by side (docs/benchmarks/predictor).

    python -m services.bench.predictor_tables --eval old=OLD.json --eval new=NEW.json [--out FILE.md]

Tables: Kendall's tau of each model and both baselines per split (sources, then prompt kinds), and
p10 / p90 coverage of each model per decile of predicted p50 and of true length (source splits).
Every figure is read from the JSON files; nothing is recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PREDICTORS = ("model", "baseline_prompt_length", "baseline_train_median")


def _cell(value: object, pattern: str = "{:.3f}") -> str:
    return "n/a" if value is None else pattern.format(value)


def tau_table(reports: dict[str, dict]) -> list[str]:
    """tau (and n, MAE) per split: one column per model, then the baselines of the first report."""
    names = list(reports)
    first = reports[names[0]]
    header = [
        "split",
        "n",
        *(f"tau {name}" for name in names),
        "tau prompt length",
        "tau median",
        *(f"MAE {name}" for name in names),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for split, by_predictor in first["metrics"].items():
        row = [split.replace(" | ", " / "), _cell(by_predictor["model"]["num_examples"], "{:.0f}")]
        row += [_cell(reports[name]["metrics"].get(split, {}).get("model", {}).get("kendall_tau")) for name in names]
        row += [_cell(by_predictor[baseline].get("kendall_tau")) for baseline in PREDICTORS[1:]]
        row += [
            _cell(reports[name]["metrics"].get(split, {}).get("model", {}).get("mae_tokens"), "{:.0f}")
            for name in names
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def decile_table(reports: dict[str, dict], split: str, grouping: str) -> list[str]:
    """p10 / p90 coverage per decile (columns) of each model (rows) on one split."""
    lines = ["| model | " + " | ".join(f"d{index + 1}" for index in range(10)) + " |", "|---|" + "---|" * 10]
    for name, report in reports.items():
        bins = report.get("calibration", {}).get(split, {}).get("model", {}).get(grouping, [])
        cells = [f"{entry['coverage_p10']:.2f} / {entry['coverage_p90']:.2f}" for entry in bins]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render(reports: dict[str, dict]) -> str:
    """All tables as one markdown text."""
    names = list(reports)
    lines = [
        "Models: " + ", ".join(f"{name} = `{report['model_version']}`" for name, report in reports.items()),
        "",
        "### Kendall's tau per split (held-out rows)",
        "",
        *tau_table(reports),
    ]
    for split in reports[names[0]].get("calibration", {}):
        for grouping, title in (("by_predicted_decile", "predicted p50"), ("by_actual_decile", "true length")):
            lines += [
                "",
                f"### {split}: p10 / p90 coverage per decile of {title} (ideal 0.10 / 0.90)",
                "",
                *decile_table(reports, split, grouping),
            ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.bench.predictor_tables", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--eval",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a label and an eval JSON file (repeatable; the first gives the rows and baselines)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here (default: print it)")
    args = parser.parse_args(argv)
    reports = {}
    for item in args.eval:
        name, separator, path = item.partition("=")
        if not separator:
            parser.error(f"--eval wants NAME=PATH, got {item!r}")
        reports[name] = json.loads(Path(path).read_text(encoding="utf-8"))
    text = render(reports)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
