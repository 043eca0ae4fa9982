"""The JSON a benchmark saves: what ran (benchmark, config), where (machine, git), and the figures.

    {"benchmark": ..., "created_utc": ..., "machine": {...}, "git": {...}, "config": {...}, ...figures}

Dataclasses anywhere inside are converted with dataclasses.asdict; non-finite floats are written as
null (strict JSON has no NaN / Infinity), so any JSON reader can load the file.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import pathlib
from typing import Any, Mapping

from services.common import run_info


def jsonable(value: Any) -> Any:
    """value with dataclasses turned into dicts, tuples into lists, nan / inf into None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def build_report(benchmark: str, config: Any, figures: Mapping[str, Any]) -> dict[str, Any]:
    """The report dict: header (benchmark, time, machine, git, config) followed by the figures."""
    header = {
        "benchmark": benchmark,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": run_info.machine_info(),
        "git": run_info.git_info(),
        "config": config,
    }
    return jsonable({**header, **figures})


def write_report(path: pathlib.Path, report: Mapping[str, Any]) -> pathlib.Path:
    """Writes the report as indented strict JSON (parent folders created); returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def save_cli_report(args: Any, benchmark: str, figures: Mapping[str, Any]) -> pathlib.Path | None:
    """For a bench main whose flags carry `--output` (None: not saved): the report with every other flag as
    its config, written there and announced; returns the path."""
    if args.output is None:
        return None
    config = {key: value for key, value in vars(args).items() if key != "output"}
    path = write_report(args.output, build_report(benchmark, config, figures))
    print(f"saved {path}")
    return path
