"""The README's reliability table, written from the JSON of `alise bench chaos` and `alise bench soak`.

    python -m services.bench.chaos_report [chaos.json] [soak.json]   -> a Markdown table on stdout

One row per fault: what a client sees, the time measured, what is lost. Rows whose phase did not
run are left out, so the table only ever shows measured figures.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Callable

DEFAULT_CHAOS = pathlib.Path("docs/benchmarks/reliability/chaos.json")
DEFAULT_SOAK = pathlib.Path("docs/benchmarks/reliability/soak.json")
Row = tuple[str, str, str, str]


def _codes(codes: dict) -> str:
    return ", ".join(f"{count} {code}" for code, count in sorted(codes.items(), key=lambda item: -item[1]))


def _fault_rows(kills: dict) -> list[Row]:
    rows = []
    for fault in kills["faults"]:
        lost = fault["num_lost_streams"]
        sees = f"in flight: {_codes(fault['in_flight_codes'])}; new: {_codes(fault['new_codes'])}"
        times = (
            f"new requests answered <= {fault['max_new_request_answer_s']:.2f} s"
            + (f", failures known <= {fault['max_failure_notice_s']:.2f} s" if fault["max_failure_notice_s"] else "")
            + f"; restart SERVING {fault['restart_serving_s']:.1f} s, used again {fault['recovery_s']:.2f} s later"
        )
        expired = fault["extra"].get("memory_expired_engine_after_s")
        if expired is not None:
            times += f"; memory service expired it after {expired:.1f} s"
        what_lost = "nothing" if not lost else f"{lost} streams that were on it (UNAVAILABLE: the client retries)"
        rows.append((fault["fault"] + " under load", sees, times, what_lost))
    gateway = kills.get("gateway_behind_alise_up")
    if gateway is not None:
        same_port = "same port" if gateway["address_after"] == gateway["address_before"] else "a NEW port"
        rows.append(
            (
                "kill -9 gateway under load (behind `alise up`)",
                f"in flight: {_codes(gateway['in_flight_codes'])}; new: {_codes(gateway['new_codes']) or 'none'} "
                f"until it is back",
                f"failures known <= {gateway['max_failure_notice_s']:.2f} s, new requests refused <= "
                f"{gateway['max_new_request_answer_s']:.2f} s; `alise up` has it SERVING again on the {same_port} "
                f"{gateway['restart_serving_s']:.1f} s after the kill, first new token {gateway['recovery_s']:.2f} s",
                "the streams in flight on it (UNAVAILABLE: the client retries)",
            )
        )
    return rows


def _engine_part(figures: dict, base: dict) -> str:
    """The admitted TTFT's part inside the engine (arrival there -> first token): what admission controls."""
    if "admitted_engine_ttft_p99_s" not in figures:
        return ""  # measured before the engine's timings were recorded
    return (
        f", of it in the engine p99 {figures['admitted_engine_ttft_p99_s']:.3f} s "
        f"(1x: {base.get('admitted_engine_ttft_p99_s', 0):.3f} s)"
    )


def _overload_rows(overload: dict) -> list[Row]:
    base = overload["levels"].get("1x", {})
    load = overload.get("measured", {}).get("load_average_1m")
    on_load = f"; machine load average {min(load):.0f}-{max(load):.0f} on 2 cores" if load else ""
    rows = []
    for level in ("4x", "20x"):
        figures = overload["levels"].get(level)
        if figures is None:
            continue
        by_gateway = figures.get("num_refused_by_gateway")
        rows.append(
            (
                f"overload {level} capacity ({figures['rate_per_s']:.0f} req/s, open loop"
                + ("; the engine on a core of its own)" if overload.get("engine_own_core") else ")"),
                f"{_codes(figures['codes'])}; rejections say which limit"
                + (f" ({by_gateway} by the gateway before any work)" if by_gateway is not None else ""),
                f"rejection p50 {figures['rejection_p50_s'] * 1e3:.0f} ms, p99 {figures['rejection_p99_s'] * 1e3:.0f} ms; "
                f"admitted TTFT p99 {figures['admitted_ttft_p99_s']:.3f} s (1x: {base.get('admitted_ttft_p99_s', 0):.3f} s)"
                + _engine_part(figures, base)
                + "; "
                f"engine RSS {figures['engine_rss_growth'] * 100:+.1f} %{on_load}",
                "nothing admitted",
            )
        )
    burst = overload["burst_1000"]
    rows.append(
        (
            "1,000 streams at once on one channel",
            _codes(burst["codes"]) + " (no CANCELLED)",
            f"rejection p99 {burst['rejection_p99_s']:.2f} s (all 1,000 arrive within ~1 s)",
            "nothing admitted",
        )
    )
    rows.append(("5,000 Health.Check at once", _codes(overload["health_checks_5000"]), "-", "-"))
    return rows


def _other_rows(phases: dict) -> list[Row]:
    rows = []
    if "deadline" in phases:
        d = phases["deadline"]
        rows.append(
            (
                f"deadline {d['probe_deadline_s']:g} s that the queue cannot meet",
                _codes(d["probe_codes"]) + ' "deadline cannot be met: predicted completion in ..."',
                f"answered p99 {d['probe_answer_p99_s'] * 1e3:.0f} ms",
                "nothing (refused before any work)",
            )
        )
    for size, figures in sorted(phases.get("huge", {}).items(), key=lambda item: len(item[0])):
        if not size.endswith("_mb"):
            continue  # "measured": when and at which commit the phase ran
        how = "over the gRPC size limit" if figures["code"] == "RESOURCE_EXHAUSTED" else "checked before tokenizing"
        rows.append(
            (
                f"{size.replace('_mb', ' MB')} prompt",
                f"{figures['code']} ({how})",
                f"{figures['seconds']:.2f} s; gateway RSS {figures['gateway_rss_before_mb']:.0f} -> "
                f"{figures['gateway_rss_2s_later_mb']:.0f} MB",
                "-",
            )
        )
    if "aborts" in phases:
        a = phases["aborts"]
        rows.append(
            (
                f"{a['num_aborted'] + a['num_completed']:,} streams cancelled at random points",
                f"{a['num_aborted_before_first_token']} before the first token, {a['num_aborted_while_decoding']} "
                f"decoding; {a['num_swapped_out']} swap-outs, {a['num_restored']} restores meanwhile",
                f"all free {a['settle_s']:.2f} s after the last cancel",
                f"{a['num_leaked']} blocks or slots leaked",
            )
        )
    if "drain" in phases:
        d = phases["drain"]
        rows.append(
            (
                "SIGTERM to an engine (drain 2 s)",
                f"short streams {_codes(d['short_codes'])}; long ones "
                f"{_codes(d['long_codes'])} at the deadline; new calls {d['new_call_code']}",
                f"exit status {d['exit_status']} after {d['exited_after_s']:.1f} s",
                "nothing that could finish",
            )
        )
    if "fuzz" in phases:
        f = phases["fuzz"]
        rows.append(
            (
                f"fuzzing every gRPC method ({f['num_cases']:,} cases)",
                "INVALID_ARGUMENT / FAILED_PRECONDITION / OK",
                f"{f['num_failing']} INTERNAL, UNKNOWN or hung; healthy after: {f['healthy_after']}",
                "-",
            )
        )
        http = f.get("http")
        if http is not None:
            statuses = sorted({status for route in http["per_route"].values() for status in route})
            rows.append(
                (
                    f"fuzzing the OpenAI HTTP routes ({http['num_cases']:,} cases)",
                    "HTTP " + " / ".join(statuses),
                    f"{http['num_failing']} 5xx or unanswered; healthy after: {f['healthy_after']}",
                    "-",
                )
            )
    return rows


def _rss_figure(soak: dict) -> str:
    """RSS growth: the largest start->end, and (sampled soaks) per group of services after warm-up and its slope."""
    if "rss_after_warmup" not in soak:
        return f"RSS growth <= {max(soak['rss_growth'].values()) * 100:.1f} %"
    engines = [name for name in soak["rss_after_warmup"] if name.startswith("engine")]
    others = [name for name in soak["rss_after_warmup"] if name not in engines and name != "bench-process"]
    parts = []
    for label, names in (("engine", engines), ("other services", others)):
        if not names:
            continue
        growth = max(soak["rss_growth"][name] for name in names)
        after = max(soak["rss_after_warmup"][name] for name in names)
        slope = max(soak["rss_slope_per_hour"][name] for name in names)
        parts.append(
            f"{label} RSS <= {growth * 100:+.1f} % start->end, <= {after * 100:+.1f} % after warm-up, {slope * 100:+.1f} %/h"
        )
    mark = soak["rss_warmup_fraction"] * 100
    return "; ".join(parts) + f" (warm-up: the first {mark:.0f} %)"


def _failure_reasons(soak: dict) -> str:
    """Each failure's status and refusal reason, e.g. " (failed: 294 RESOURCE_EXHAUSTED/DEADLINE_UNMEETABLE)"."""
    failures = soak.get("failures") or {}
    return f" (failed: {_codes(failures)})" if failures else ""


def _soak_row(soak: dict) -> Row:
    leaked = sum(soak["engine_blocks_used_after"].values()) + soak["host_blocks_used_after"]
    return (
        f"soak {soak['duration_s'] / 60:.1f} min, {soak['concurrency']} streams + bursts",
        f"{_codes(soak['codes'])}{_failure_reasons(soak)}; every stream exactly max_tokens long in "
        f"{soak['num_wrong_length']} exceptions; "
        f"{soak['num_replayed']:,} seeded replays, {soak['num_mismatched']} diverge from some token on",
        f"{soak['num_tokens']:,} tokens, {soak['num_preemptions']} preemptions, {soak['num_swapped_out']} "
        f"swap-outs; {_rss_figure(soak)}",
        f"{soak['num_wrong_length']} streams lost or duplicated tokens, {leaked} blocks or slots leaked"
        + (
            "; divergent replays: a sample moved by logits that are not batch-invariant (swaps lossless)"
            if soak["num_mismatched"]
            else ""
        ),
    )


def table(chaos: dict | None, soak: dict | None) -> str:
    rows: list[Row] = []
    if chaos is not None:
        phases = chaos["phases"]
        builders: list[tuple[str, Callable[[dict], list[Row]]]] = [("kills", _fault_rows), ("overload", _overload_rows)]
        for name, build in builders:
            if name in phases:
                rows += build(phases[name])
        rows += _other_rows(phases)
    if soak is not None:
        rows.append(_soak_row(soak["soak"]))
    lines = ["| Fault | What a client sees | Time measured | What is lost |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    return "\n".join(lines)


def _load(path: pathlib.Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.bench.chaos_report", description=__doc__)
    parser.add_argument("chaos", nargs="?", type=pathlib.Path, default=DEFAULT_CHAOS, help="alise bench chaos --output")
    parser.add_argument("soak", nargs="?", type=pathlib.Path, default=DEFAULT_SOAK, help="alise bench soak --output")
    args = parser.parse_args(argv)
    print(table(_load(args.chaos), _load(args.soak)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
