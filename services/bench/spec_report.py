"""`alise bench spec` figures: per (set, batch, method) medians and spreads, exactness, goals, table and PNG.

Every speedup is a ratio of runs made side by side: for repeat r, (set, b, method) tokens/s over
(set, b, off) tokens/s of the same repeat, whose groups ran interleaved with it (spec_bench.py). The
median over repeats is the headline; min and max are the spread.
"""

from __future__ import annotations

import pathlib
import statistics
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from services.bench.spec_prompts import PromptSetName
from services.bench.spec_run import GroupRun
from services.engine.spec.method import SpeculativeMethod


class BenchPreset(StrEnum):
    """A method column's drafting rules other than the engine's current ones (after an '@')."""

    PREV = "prev"  # n-gram as before 2026-12-07's second pass: no past-end copy, no unigram fallback, one-rate k
    # the turn-down before the measured draft costs (spec/draft_cost.py): one k for the batch, priced by the
    # step-cost fit, pooled acceptance, no probe; the drafting rules otherwise the current ones
    FIT = "fit"
    # the measured turn-down with an accepted token worth a decode's full share of a step (not only as far
    # as the whole batch drafts)
    SHARE = "share"
    # the measured turn-down valuing every decode's accepted token alike (the step's fixed cost as far as the
    # batch's decodes propose), not by the batch's critical path (DraftCostConfig.critical_path)
    BATCH = "batch"
    # n-gram requests pause drafting below an estimated acceptance of LOW_PAUSE_ACCEPTANCE, not the engine's
    # 0.2 (session 13: replayed under the engine's batch-1 rules, +0.03x on summarise-rewrite, 0 elsewhere;
    # spec_bound_variants.json)
    LOW_PAUSE = "lowpause"


class BenchMethod(str):
    """A method column of `alise bench spec`: a --speculative value, optionally with its own k after a
    colon ("ngram:16") and a preset after an '@' ("ngram:4@prev"), so variants of one drafter run side
    by side. It compares and hashes as its text, so a plain one equals its SpeculativeMethod member (a
    StrEnum)."""

    def __new__(cls, text: str) -> BenchMethod:
        head, at, preset = str(text).partition("@")
        method, colon, k = head.partition(":")
        SpeculativeMethod(method)  # ValueError on an unknown method
        if colon and (not k.isdigit() or int(k) < 1):
            raise ValueError(f"method {text!r}: the k after ':' must be a positive integer")
        if at and (preset not in set(BenchPreset) or SpeculativeMethod(method) is not SpeculativeMethod.NGRAM):
            raise ValueError(f"method {text!r}: presets ({', '.join(BenchPreset)}) apply to ngram only")
        return super().__new__(cls, str(text))

    @property
    def method(self) -> SpeculativeMethod:
        return SpeculativeMethod(self.partition("@")[0].partition(":")[0])

    @property
    def num_speculative_tokens(self) -> int | None:
        """Its own k, or None for the run's --num-speculative-tokens."""
        k = self.partition("@")[0].partition(":")[2]
        return int(k) if k else None

    @property
    def preset(self) -> BenchPreset | None:
        preset = self.partition("@")[2]
        return BenchPreset(preset) if preset else None

    @property
    def value(self) -> str:
        return str(self)


# issue 18's goals: CPU, real default model, batch 1
GOAL_NGRAM_SUMMARISE = 1.6  # n-gram on summarise/rewrite, decode tokens/s over off
GOAL_NGRAM_OPEN_CHAT = 0.97  # n-gram on open chat: no slower than off
GOAL_EARLY_EXIT_BEST = 1.3  # early exit on at least one set
GOAL_NGRAM_LARGE_BATCH = 0.97  # n-gram at batch 16, every set: drafting turned down where it costs more than it saves


@dataclass(frozen=True)
class GroupRecord:
    """One group's run, with where it sits in the sweep."""

    repeat: int
    prompt_set: PromptSetName
    batch_size: int
    group_index: int
    method: BenchMethod
    run: GroupRun


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def _repeat_figures(records: list[GroupRecord]) -> dict[str, float]:
    """One repeat of one cell: decode tokens/s over all its groups, every output token over all their steps
    (the group figures, prefill included: spec_run.py), mean TPOT over all its requests."""
    num_tokens = sum(r.run.num_decode_tokens for r in records)
    num_output_tokens = sum(len(ids) for r in records for ids in r.run.outputs.values())
    tpot = [t for r in records for t in r.run.tpot_s]
    return {
        "decode_tokens_per_s": _ratio(num_tokens, sum(r.run.decode_s for r in records)),
        "decode_tokens_per_cpu_s": _ratio(num_tokens, sum(r.run.decode_cpu_s for r in records)),
        "group_tokens_per_s": _ratio(num_output_tokens, sum(r.run.group_s for r in records)),
        "group_tokens_per_cpu_s": _ratio(num_output_tokens, sum(r.run.group_cpu_s for r in records)),
        "tpot_ms": 1000 * statistics.fmean(tpot) if tpot else float("nan"),
    }


def _cell(records: list[GroupRecord], off_by_repeat: dict[int, dict[str, float]]) -> dict:
    by_repeat: dict[int, list[GroupRecord]] = defaultdict(list)
    for record in records:
        by_repeat[record.repeat].append(record)
    per_repeat = {repeat: _repeat_figures(rows) for repeat, rows in sorted(by_repeat.items())}
    speedups, cpu_speedups, group_speedups, group_cpu_speedups = (
        [_ratio(figures[key], off_by_repeat[repeat][key]) for repeat, figures in per_repeat.items()]
        for key in ("decode_tokens_per_s", "decode_tokens_per_cpu_s", "group_tokens_per_s", "group_tokens_per_cpu_s")
    )
    drafted = sum(r.run.spec.num_draft_tokens for r in records)
    accepted = sum(r.run.spec.num_accepted_tokens for r in records)
    verifies = sum(r.run.spec.num_verifies for r in records)
    return {
        "decode_tokens_per_s": _spread([f["decode_tokens_per_s"] for f in per_repeat.values()]),
        "tpot_ms": _spread([f["tpot_ms"] for f in per_repeat.values()]),
        "speedup_over_off": _spread(speedups),
        "speedup_over_off_by_repeat": speedups,
        "decode_tokens_per_cpu_s": _spread([f["decode_tokens_per_cpu_s"] for f in per_repeat.values()]),
        "speedup_over_off_cpu_time": _spread(cpu_speedups),
        "group_tokens_per_cpu_s": _spread([f["group_tokens_per_cpu_s"] for f in per_repeat.values()]),
        "group_speedup_over_off": _spread(group_speedups),  # every output token over every step: spec_run.py
        "group_speedup_over_off_cpu_time": _spread(group_cpu_speedups),
        "acceptance_rate": _ratio(accepted, drafted),  # accepted drafts / verified drafts, all repeats
        "mean_accepted_per_verify": _ratio(accepted, verifies),
        "drafts_per_step": _ratio(drafted, sum(r.run.num_steps for r in records)),
        "num_draft_tokens": drafted,
        "num_accepted_tokens": accepted,
        "num_verifies": verifies,
        "num_requests": sum(len(r.run.outputs) for r in records),
        "num_decode_tokens": sum(r.run.num_decode_tokens for r in records),
        "num_output_tokens": sum(len(ids) for r in records for ids in r.run.outputs.values()),
        "decode_s": sum(r.run.decode_s for r in records),
        "decode_cpu_s": sum(r.run.decode_cpu_s for r in records),
        "group_s": sum(r.run.group_s for r in records),
        "group_cpu_s": sum(r.run.group_cpu_s for r in records),
    }


def exactness(records: list[GroupRecord]) -> dict[str, dict]:
    """Per method: requests whose greedy output differs from off's in the same group and repeat."""
    off = {
        (r.repeat, r.prompt_set, r.batch_size, r.group_index): r.run.outputs
        for r in records
        if r.method == SpeculativeMethod.OFF
    }
    found: dict[str, dict] = {}
    for record in records:
        if record.method == SpeculativeMethod.OFF:
            continue
        figures = found.setdefault(record.method.value, {"num_compared": 0, "num_mismatched": 0, "mismatches": []})
        reference = off[(record.repeat, record.prompt_set, record.batch_size, record.group_index)]
        for prompt_id, output in record.run.outputs.items():
            figures["num_compared"] += 1
            expected = reference[prompt_id]
            if output != expected:
                figures["num_mismatched"] += 1
                first = next(
                    (i for i, (a, b) in enumerate(zip(output, expected)) if a != b), min(len(output), len(expected))
                )
                figures["mismatches"].append(
                    {"prompt_set": record.prompt_set.value, "batch_size": record.batch_size, "repeat": record.repeat,
                     "prompt_id": prompt_id, "first_mismatch_index": first, "num_tokens": len(output),
                     "num_tokens_off": len(expected)}
                )  # fmt: skip
    return found


def off_reproducibility(records: list[GroupRecord]) -> dict[str, int]:
    """off against itself: outputs of repeat r > 0 that differ from repeat 0's for the same group
    (nonzero means greedy decoding itself is not reproducible here, whatever speculation does)."""
    off = {
        (r.repeat, r.prompt_set, r.batch_size, r.group_index): r.run.outputs
        for r in records
        if r.method == SpeculativeMethod.OFF
    }
    compared = mismatched = 0
    for (repeat, *cell), outputs in off.items():
        first = off.get((0, *cell))
        if repeat == 0 or first is None:
            continue
        for prompt_id, output in outputs.items():
            compared += 1
            mismatched += output != first[prompt_id]
    return {"num_compared": compared, "num_mismatched": mismatched}


def _group_row(record: GroupRecord) -> dict:
    """One group's raw figures (every cell figure is computed from these)."""
    run = record.run
    return {
        "repeat": record.repeat,
        "prompt_set": record.prompt_set.value,
        "batch_size": record.batch_size,
        "group_index": record.group_index,
        "method": record.method.value,
        "num_steps": run.num_steps,
        "num_decode_steps": run.num_decode_steps,
        "num_decode_tokens": run.num_decode_tokens,
        "decode_s": run.decode_s,
        "decode_cpu_s": run.decode_cpu_s,
        "group_s": run.group_s,
        "group_cpu_s": run.group_cpu_s,
        "mean_tpot_ms": 1000 * statistics.fmean(run.tpot_s) if run.tpot_s else None,
        "num_output_tokens": sum(len(ids) for ids in run.outputs.values()),
        "num_draft_tokens": run.spec.num_draft_tokens,
        "num_accepted_tokens": run.spec.num_accepted_tokens,
        "num_verifies": run.spec.num_verifies,
    }


def summarise(records: list[GroupRecord], methods: tuple[BenchMethod, ...]) -> dict:
    """cells[set][batch][method] figures, exactness and goals."""
    grouped: dict[tuple, list[GroupRecord]] = defaultdict(list)
    for record in records:
        grouped[(record.prompt_set, record.batch_size, record.method)].append(record)
    cells: dict[str, dict[str, dict[str, dict]]] = {}
    for prompt_set, batch_size in dict.fromkeys((r.prompt_set, r.batch_size) for r in records):
        off_rows: dict[int, list[GroupRecord]] = defaultdict(list)
        for record in grouped[(prompt_set, batch_size, SpeculativeMethod.OFF)]:
            off_rows[record.repeat].append(record)
        off_by_repeat = {repeat: _repeat_figures(rows) for repeat, rows in off_rows.items()}
        cells.setdefault(prompt_set.value, {})[str(batch_size)] = {
            method.value: _cell(grouped[(prompt_set, batch_size, method)], off_by_repeat) for method in methods
        }
    return {
        "cells": cells,
        "groups": [_group_row(record) for record in records],
        "exactness": exactness(records),
        "off_reproducibility": off_reproducibility(records),
        "goals": goals(cells, methods),
    }


def _speedup(
    cells: dict, prompt_set: PromptSetName, batch_size: int, method: str, key: str = "speedup_over_off"
) -> float | None:
    cell = cells.get(prompt_set.value, {}).get(str(batch_size), {}).get(str(method))
    return None if cell is None or key not in cell else cell[key]["median"]


def goals(cells: dict, methods: tuple[BenchMethod, ...] = ()) -> dict:
    """Issue 18's batch-1 goals against the median speedups (None where not measured); met only when
    both the wall-time and the CPU-time medians reach the goal (on a shared machine one can be noise).
    The goals name the plain methods (the engine's defaults); a variant with its own k ("ngram:16")
    gets its n-gram goals too, keyed with its label in brackets."""
    early = {name.value: _speedup(cells, name, 1, SpeculativeMethod.EARLY_EXIT) for name in PromptSetName}
    measured = {name: value for name, value in early.items() if value is not None}
    best_set = max(measured, key=measured.get) if measured else None

    def goal(prompt_set: PromptSetName | None, method: str, target: float, batch_size: int = 1) -> dict:
        value = None if prompt_set is None else _speedup(cells, prompt_set, batch_size, method)
        cpu = (
            None if prompt_set is None else _speedup(cells, prompt_set, batch_size, method, "speedup_over_off_cpu_time")
        )
        group_cpu = (
            None
            if prompt_set is None
            else _speedup(cells, prompt_set, batch_size, method, "group_speedup_over_off_cpu_time")
        )
        met_wall = None if value is None else value >= target
        met_cpu = None if cpu is None else cpu >= target
        return {
            "goal": target,
            "measured": value,  # median wall-time speedup: the headline
            "measured_cpu_time": cpu,  # the same on thread CPU time (robust to a shared machine)
            "met_wall_time": met_wall,
            "met_cpu_time": met_cpu,
            "met": None if value is None else bool(met_wall and met_cpu),  # on both clocks: one alone may be noise
            # every output token over every step of the groups, prefill included (spec_run.py), CPU time: not
            # what "met" reads, shown next to it
            "measured_group_cpu_time": group_cpu,
            "prompt_set": None if prompt_set is None else prompt_set.value,
        }

    found = {
        "ngram_summarise_rewrite_batch1": goal(
            PromptSetName.SUMMARISE_REWRITE, SpeculativeMethod.NGRAM, GOAL_NGRAM_SUMMARISE
        ),
        "ngram_open_chat_batch1": goal(PromptSetName.OPEN_CHAT, SpeculativeMethod.NGRAM, GOAL_NGRAM_OPEN_CHAT),
        "early_exit_best_set_batch1": goal(
            None if best_set is None else PromptSetName(best_set), SpeculativeMethod.EARLY_EXIT, GOAL_EARLY_EXIT_BEST
        ),
    }
    for name in PromptSetName:
        found[f"ngram_{name.value.replace('-', '_')}_batch16"] = goal(
            name, SpeculativeMethod.NGRAM, GOAL_NGRAM_LARGE_BATCH, 16
        )
    for variant in map(BenchMethod, methods):
        if variant.method is SpeculativeMethod.NGRAM and variant != SpeculativeMethod.NGRAM:
            found[f"ngram_summarise_rewrite_batch1[{variant}]"] = goal(
                PromptSetName.SUMMARISE_REWRITE, variant, GOAL_NGRAM_SUMMARISE
            )
            found[f"ngram_open_chat_batch1[{variant}]"] = goal(PromptSetName.OPEN_CHAT, variant, GOAL_NGRAM_OPEN_CHAT)
    return found


def _fmt(value: float | None, spec: str) -> str:
    """value formatted, or '-' where the JSON holds None (a NaN: nothing to divide by)."""
    if value is None or value != value:
        return format("-", spec.split(".")[0])  # the same width and alignment
    return format(value, spec)


def print_table(report: dict) -> None:
    """The cells as a table; works on the in-memory figures and on a saved JSON alike."""
    print(f"{'set':<18} {'batch':>5} {'method':<10} {'tok/s':>8} {'speedup':>8} {'(min-max)':>13} {'cpu-x':>6} {'grp-cpu-x':>9}"
          f" {'TPOT ms':>8} {'accept':>7} {'acc/ver':>7} {'drafts/step':>11}")  # fmt: skip
    for prompt_set, batches in report["cells"].items():
        for batch_size, methods in batches.items():
            for method, cell in methods.items():
                speedup = cell["speedup_over_off"]
                print(
                    f"{prompt_set:<18} {batch_size:>5} {method:<10} {_fmt(cell['decode_tokens_per_s']['median'], '>8.1f')}"
                    f" {_fmt(speedup['median'], '>8.3f')} {_fmt(speedup['min'], '>6.2f')}-{_fmt(speedup['max'], '<6.2f')}"
                    f" {_fmt(cell['speedup_over_off_cpu_time']['median'], '>6.3f')}"
                    f" {_fmt(cell.get('group_speedup_over_off_cpu_time', {}).get('median'), '>9.3f')}"
                    f" {_fmt(cell['tpot_ms']['median'], '>8.1f')} {_fmt(cell['acceptance_rate'], '>7.3f')}"
                    f" {_fmt(cell['mean_accepted_per_verify'], '>7.2f')} {_fmt(cell['drafts_per_step'], '>11.2f')}"
                )
    for method, figures in report["exactness"].items():
        print(f"exactness {method}: {figures['num_mismatched']} of {figures['num_compared']} outputs differ from off")
    again = report["off_reproducibility"]
    print(f"off vs off (repeats > 0 vs repeat 0): {again['num_mismatched']} of {again['num_compared']} outputs differ")
    for name, goal in report["goals"].items():
        print(
            f"goal {name} ({goal['prompt_set']}): speedup {_fmt(goal['measured'], '.3f')} on wall time,"
            f" {_fmt(goal['measured_cpu_time'], '.3f')} on CPU time (goal >= {goal['goal']}, met on both: {goal['met']});"
            f" whole groups on CPU time {_fmt(goal.get('measured_group_cpu_time'), '.3f')}"
        )


def plot_speedups(report: dict, path: pathlib.Path) -> pathlib.Path:
    """One panel per prompt set: median decode speedup over off by batch size, a bar per method,
    whiskers from the min to the max over repeats, x the median on thread CPU time, a line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    cells = report["cells"]
    figure, axes_row = pyplot.subplots(1, len(cells), figsize=(4.0 * len(cells), 3.8), dpi=120, squeeze=False)
    try:
        for axes, (prompt_set, batches) in zip(axes_row[0], cells.items()):
            methods = [m for m in next(iter(batches.values())) if m != SpeculativeMethod.OFF.value]
            width = 0.8 / max(1, len(methods))
            for index, method in enumerate(methods):
                medians = [batches[b][method]["speedup_over_off"]["median"] for b in batches]
                lows = [m - batches[b][method]["speedup_over_off"]["min"] for m, b in zip(medians, batches)]
                highs = [batches[b][method]["speedup_over_off"]["max"] - m for m, b in zip(medians, batches)]
                positions = [i + (index - (len(methods) - 1) / 2) * width for i in range(len(batches))]
                axes.bar(positions, medians, width, yerr=[lows, highs], capsize=3, label=method)
                cpu = [batches[b][method]["speedup_over_off_cpu_time"]["median"] for b in batches]
                label = "on thread CPU time" if index == 0 else None
                axes.scatter(positions, cpu, marker="x", color="black", zorder=3, label=label)
            axes.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
            axes.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
            axes.set_title(prompt_set)
            axes.set_ylabel("decode tokens/s over off (median)")
            axes.grid(True, axis="y", alpha=0.3)
            axes.legend(fontsize="small")
        figure.suptitle("speculative decoding, CPU 1 thread: speedup over off (whiskers: min-max over repeats)")
        figure.tight_layout()
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)
    finally:
        pyplot.close(figure)
    return path
