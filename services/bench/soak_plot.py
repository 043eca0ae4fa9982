"""RSS of every service over a soak, from its JSON (`rss_samples`), as a PNG next to it.

    python -m services.bench.soak_plot [docs/benchmarks/reliability/soak.json]

One panel per service, MiB against minutes, with the warm-up mark: a leak is a line that keeps
rising after the mark, warm-up a rise before it. matplotlib with the Agg backend (no display).
"""

from __future__ import annotations

import json
import pathlib
import sys

DEFAULT_SOAK = pathlib.Path("docs/benchmarks/reliability/soak.json")


def plot_rss(soak: dict, path: pathlib.Path) -> pathlib.Path:
    """Writes the PNG; `soak` is the JSON's results["soak"] (with rss_samples)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    series = soak["rss_samples"]
    figure, axes = pyplot.subplots(len(series), 1, figsize=(8, 2.0 * len(series)), sharex=True)
    mark_min = soak["rss_warmup_fraction"] * soak["duration_s"] / 60.0
    for ax, (name, samples) in zip(axes, series.items(), strict=True):
        minutes = [t / 60.0 for t in samples["t_s"]]
        ax.plot(minutes, samples["rss_mib"], linewidth=1.0)
        ax.axvline(mark_min, color="grey", linestyle="--", linewidth=0.8)
        after = soak["rss_after_warmup"].get(name)
        slope = soak["rss_slope_per_hour"].get(name)
        label = f"{name}: {after * 100:+.1f} % after warm-up, {slope * 100:+.1f} %/h" if after is not None else name
        ax.set_title(label, fontsize=9, loc="left")
        ax.set_ylabel("RSS, MiB", fontsize=8)
    axes[-1].set_xlabel("minutes into the load phase (dashed: warm-up mark)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)
    return path


def main(argv: list[str]) -> int:
    source = pathlib.Path(argv[0]) if argv else DEFAULT_SOAK
    soak = json.loads(source.read_text())["soak"]
    print(plot_rss(soak, source.with_name(source.stem + "_rss.png")))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
