"""Resident memory of every service, sampled every few seconds through a soak, and its growth.

Two samples (start and end) cannot tell a leak from warm-up: during the first minutes glibc's malloc
arenas grow to the peak concurrency's working set, torch's CPU allocator and the tokenizer/prefix
caches fill, and gRPC grows its per-connection buffers; all of that then stays resident without
growing further. So each series is reported three ways:

    start_to_end    last sample / first sample - 1 (the figure measured before; includes warm-up)
    after_warmup    last sample / the first sample at or after `warmup_fraction` of the run - 1
    slope_per_hour  least-squares slope of the samples after warm-up, as a fraction of the RSS at the
                    warm-up mark per hour: a leak shows as a steady positive slope, warm-up does not

RSS is read from /proc/<pid>/statm (Linux), in bytes.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import numpy as np

SECONDS_PER_HOUR = 3600.0


def rss_bytes_of(pid: int) -> int:
    """Resident memory of one process (Linux /proc), bytes."""
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class RssGrowth:
    """One service's RSS over a soak (JSON-ready through `to_json`)."""

    start_bytes: int
    warmup_bytes: int  # the first sample at or after the warm-up mark
    end_bytes: int
    peak_bytes: int
    start_to_end: float
    after_warmup: float
    slope_per_hour: float  # fitted over the samples after warm-up, / warmup_bytes

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def rss_growth(times_s: list[float], values_bytes: list[int], warmup_fraction: float) -> RssGrowth:
    """Growth figures of one series; needs >= 2 samples after the warm-up mark for the slope."""
    if len(times_s) != len(values_bytes) or len(times_s) < 2:
        raise ValueError(f"need >= 2 paired samples, got {len(times_s)} times and {len(values_bytes)} values")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    mark_s = times_s[0] + warmup_fraction * (times_s[-1] - times_s[0])
    first = next(index for index, t in enumerate(times_s) if t >= mark_s)
    first = min(first, len(times_s) - 2)  # at least two samples to fit
    warmup = values_bytes[first]
    hours = np.asarray(times_s[first:], dtype=np.float64) / SECONDS_PER_HOUR
    slope_bytes_per_hour = float(np.polyfit(hours, np.asarray(values_bytes[first:], dtype=np.float64), 1)[0])
    return RssGrowth(
        start_bytes=values_bytes[0],
        warmup_bytes=warmup,
        end_bytes=values_bytes[-1],
        peak_bytes=max(values_bytes),
        start_to_end=values_bytes[-1] / values_bytes[0] - 1.0,
        after_warmup=values_bytes[-1] / warmup - 1.0,
        slope_per_hour=slope_bytes_per_hour / warmup,
    )


class RssSampler:
    """Samples each named process's RSS every `every_s` seconds until `stop()` (one asyncio task).

    A process that has exited is skipped from then on (its series just ends); a soak restarts nothing.
    """

    def __init__(self, pids: dict[str, int], every_s: float) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.pids = dict(pids)
        self.every_s = every_s
        self.times_s: dict[str, list[float]] = {name: [] for name in pids}
        self.values_bytes: dict[str, list[int]] = {name: [] for name in pids}
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._start_s = time.monotonic()

    def sample(self) -> None:
        now_s = time.monotonic() - self._start_s
        for name, pid in self.pids.items():
            try:
                value = rss_bytes_of(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
            self.times_s[name].append(now_s)
            self.values_bytes[name].append(value)

    def start(self) -> RssSampler:
        self.sample()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.every_s)
            except TimeoutError:
                self.sample()

    async def stop(self) -> None:
        """One last sample, then the task ends."""
        self._stop.set()
        if self._task is not None:
            await self._task
        self.sample()

    def growth(self, warmup_fraction: float) -> dict[str, RssGrowth]:
        return {
            name: rss_growth(self.times_s[name], self.values_bytes[name], warmup_fraction)
            for name in self.pids
            if len(self.times_s[name]) >= 2
        }

    def series_mib(self) -> dict[str, dict[str, list[float]]]:
        """Every sample, rounded (seconds since start, MiB), for the JSON and a plot."""
        return {
            name: {
                "t_s": [round(t, 1) for t in self.times_s[name]],
                "rss_mib": [round(v / 2**20, 2) for v in self.values_bytes[name]],
            }
            for name in self.pids
        }
