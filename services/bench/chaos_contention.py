"""Where an admitted request's TTFT goes under overload, apart from the server's admission.

The overload bench runs the load generator, the gateway and the engine on the same few cores. At 20x
capacity the generator and the gateway spend CPU on hundreds of refusals per second; that CPU is
taken from the engine, and every process's event loop runs late. A client's TTFT then contains:

    engine TTFT          arrival at the engine -> first token (what admission controls: the work
                         queued ahead of the request), reported by the engine in the final message
    the way there/back   client loop -> gateway -> engine and back, late when its loop is busy

`ContentionProbe` measures the second part's causes during a load level: CPU seconds of each
process (the cores it took, of `os.cpu_count()`), the machine's 1-minute load average, and how late
this process's event loop wakes up (a timer every 10 ms: the client's own delay in seeing a token).
"""

from __future__ import annotations

import asyncio
import os
import time

LAG_TICK_S = 0.01


def process_cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux /proc), seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state is field 3
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def nearest_rank_percentile(values: list[float], fraction: float) -> float:
    """The value at rank fraction * n of the sorted values (no interpolation); 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class ContentionProbe:
    """CPU of the named processes and this loop's lateness between `start()` and `stop()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._cpu_before_s: dict[str, float] = {}
        self._began_s = 0.0
        self._lags_s: list[float] = []
        self._task: asyncio.Task | None = None

    def start(self) -> ContentionProbe:
        self._cpu_before_s = {name: process_cpu_s(pid) for name, pid in self.pids.items()}
        self._began_s = time.monotonic()
        self._task = asyncio.create_task(self._tick())
        return self

    async def _tick(self) -> None:
        while True:
            due_s = time.monotonic() + LAG_TICK_S
            await asyncio.sleep(LAG_TICK_S)
            self._lags_s.append(max(0.0, time.monotonic() - due_s))

    async def stop(self) -> dict:
        """The figures (JSON-ready): cores used per process, load average, loop lag p50/p99/max."""
        wall_s = time.monotonic() - self._began_s
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        cores = {name: (process_cpu_s(pid) - self._cpu_before_s[name]) / wall_s for name, pid in self.pids.items()}
        return {
            "cpu_cores_used": cores,  # CPU seconds per wall second, per process
            "num_cpus": os.cpu_count(),
            "load_average_1m": os.getloadavg()[0],
            "client_loop_lag_p50_s": nearest_rank_percentile(self._lags_s, 0.5),
            "client_loop_lag_p99_s": nearest_rank_percentile(self._lags_s, 0.99),
            "client_loop_lag_max_s": max(self._lags_s, default=0.0),
        }
