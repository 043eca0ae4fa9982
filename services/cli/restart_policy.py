"""When `alise up` restarts a dead child, and when it gives up and stops the stack.

A child that dies is restarted after a backoff that doubles with each death inside the window
(0.5 s, 1 s, 2 s, ... up to max_backoff_s); the other children keep serving meanwhile through their
fallbacks (a dead predictor: the gateway's prior; a dead memory service: recompute instead of
swap). Only repeated failure stops the stack: more than `max_restarts` deaths of one child within
`window_s` seconds. Pure bookkeeping (the clock is passed in), so it is unit-testable.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from services.common import arg_types
from services.common.config_flags import setting


@dataclass(frozen=True)
class RestartSettings:
    """How a dead child is restarted; the two fields with help are `alise up` flags (config_flags)."""

    # restarts of one child allowed within window_s; one more death stops the stack
    max_restarts: int = setting(5, "restarts of one child within the window")
    # the window deaths are counted in, seconds
    window_s: float = setting(
        60.0,
        "window deaths are counted in",
        flag="--restart-window-s",
        metavar="RESTART_WINDOW_S",
        type=arg_types.positive_float,
    )
    initial_backoff_s: float = 0.5  # wait before the first restart, seconds
    max_backoff_s: float = 8.0  # the doubling stops here, seconds

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if not self.window_s > 0 or not self.initial_backoff_s >= 0 or self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("need window_s > 0 and 0 <= initial_backoff_s <= max_backoff_s")


class RestartBudget:
    """Deaths of each child within the window; says whether and after how long to restart."""

    def __init__(self, settings: RestartSettings) -> None:
        self.settings = settings
        self._deaths: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def on_death(self, name: str, now_s: float) -> float | None:
        """Records a death of `name`; the backoff before restarting it, or None to give up."""
        deaths = self._deaths[name]
        deaths.append(now_s)
        while deaths and now_s - deaths[0] > self.settings.window_s:
            deaths.popleft()
        if len(deaths) > self.settings.max_restarts:
            return None
        backoff_s = self.settings.initial_backoff_s * 2 ** (len(deaths) - 1)
        return min(backoff_s, self.settings.max_backoff_s)

    def num_deaths(self, name: str) -> int:
        """Deaths of `name` inside the window as of its last death."""
        return len(self._deaths[name])
