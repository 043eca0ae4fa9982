"""Tables and the plot of `alise bench attention` (pure formatting: no GPU needed)."""

from __future__ import annotations

import pathlib
from typing import Any

TABLE_HEADER = (
    f"{'layout':>6} {'kv':>4} {'batch':>5} {'context':>7} {'splits':>6} {'kernel us':>10} {'GB/s':>7} "
    f"{'% copy':>6} {'sdpa us':>9} {'gather+sdpa':>11} {'x gather':>8} {'rel err':>8}"
)


def _cell(row: dict, key: str, width: int, fmt: str) -> str:
    value = row.get(key)
    return f"{value:{width}{fmt}}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def format_row(row: dict[str, Any]) -> str:
    head = f"{row['layout']:>6} {row['kv_dtype']:>4} {row['batch']:>5} {row['context_len']:>7}"
    if "kernel_us" not in row:
        return f"{head}  skipped: {row.get('skipped', '?')}"
    share = 100 * row["share_of_copy_bandwidth"]
    return (
        f"{head} {row['num_splits']:>6} {row['kernel_us']:>10.1f} {row['achieved_gb_per_s']:>7.0f} {share:>6.1f} "
        f"{_cell(row, 'sdpa_dense_us', 9, '.1f')} {_cell(row, 'sdpa_gather_us', 11, '.1f')} "
        f"{_cell(row, 'speedup_vs_sdpa_gather', 8, '.2f')} {row['relative_error_vs_sdpa_fp32']:>8.1e}"
    )


def format_table(report: dict[str, Any]) -> str:
    """The sweep as text, titled with the GPU and its measured copy bandwidth."""
    title = (
        f"paged decode attention on {report['gpu']['name']} (torch {report['torch']}, CUDA {report['cuda']}); "
        f"device-to-device copy {report['copy_bandwidth_gb_per_s']:.0f} GB/s; times are medians, cold L2"
    )
    return "\n".join([title, TABLE_HEADER, *(format_row(row) for row in report["rows"])])


def format_e2e(rows: list[dict[str, Any]]) -> str:
    """End-to-end output tokens/s: our engine, HF generate(), the roofline bound."""
    lines = [f"{'system':>22} {'batch':>5} {'tokens/s':>10} {'decode tok/s':>12} {'x HF':>6} {'% roofline':>10}"]
    for row in rows:
        if "skipped" in row:
            lines.append(f"{row['system']:>22} {row['batch']:>5}  skipped: {row['skipped']}")
            continue
        lines.append(
            f"{row['system']:>22} {row['batch']:>5} {row['output_tokens_per_s']:>10.0f} "
            f"{_cell(row, 'decode_tokens_per_s', 12, '.0f')} {_cell(row, 'speedup_vs_hf', 6, '.1f')} "
            f"{_cell(row, 'share_of_roofline', 10, '.1%')}"
        )
    return "\n".join(lines)


def save_plot(report: dict[str, Any], path: pathlib.Path) -> pathlib.Path | None:
    """Share of copy bandwidth vs context, one line per batch, one panel per layout x KV dtype."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [row for row in report["rows"] if "kernel_us" in row]
    panels = sorted({(row["layout"], row["kv_dtype"]) for row in rows})
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, (layout, kv_dtype) in zip(axes[0], panels):
        for batch in sorted({row["batch"] for row in rows}):
            points = sorted(
                (r["context_len"], r["share_of_copy_bandwidth"])
                for r in rows
                if (r["layout"], r["kv_dtype"], r["batch"]) == (layout, kv_dtype, batch)
            )
            axis.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=f"batch {batch}")
        axis.set(xscale="log", xlabel="context (tokens)", ylabel="% of copy bandwidth", title=f"{layout} {kv_dtype} KV")
        axis.set_ylim(0, 110)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"paged decode attention, {report['gpu']['name']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
