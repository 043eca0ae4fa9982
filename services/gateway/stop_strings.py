"""Stop strings over a text stream that arrives in deltas.

A stop string may straddle deltas ("...END" arriving as "...E" then "ND"), so the matcher keeps a
small buffer: the tail of the text that could still be the start of a stop string. Only that tail
is held back from the client; everything before it is final and emitted at once.

    buffer = held tail + new delta
    match found at i      -> emit buffer[:i], finished (the stop string itself is never returned);
                             of several matches, the one that ends first wins
    no match              -> hold the longest suffix that is a proper prefix of some stop string,
                             emit the rest

Invariant: the held tail is shorter than the longest stop string, so each feed costs
O(len(delta) + longest stop) per stop string, independent of how much text came before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class StopScan:
    """Result of feeding one delta."""

    text: str  # text that is now final and may be sent to the client
    matched: bool  # True when a stop string matched; `text` ends right before it


class StopStringMatcher:
    """Finds the earliest stop string in a streamed text; holds back only a possible partial match."""

    def __init__(self, stop_strings: Sequence[str]) -> None:
        if any(not stop for stop in stop_strings):
            raise ValueError("stop strings must be non-empty")
        self._stop_strings = tuple(stop_strings)
        self._held = ""  # tail of the text that may be the start of a stop string

    @property
    def held_text(self) -> str:
        """Text received but not yet released (a possible partial stop string)."""
        return self._held

    def feed(self, text_delta: str) -> StopScan:
        """Adds a delta; returns what can be released and whether a stop string matched."""
        if not self._stop_strings:
            return StopScan(text_delta, matched=False)
        buffer = self._held + text_delta
        match_index = self._earliest_match(buffer)
        if match_index is not None:
            self._held = ""
            return StopScan(buffer[:match_index], matched=True)
        num_held = self._longest_partial_suffix(buffer)
        self._held = buffer[len(buffer) - num_held :]
        return StopScan(buffer[: len(buffer) - num_held], matched=False)

    def flush(self) -> str:
        """Releases the held tail (the stream ended without a match)."""
        held, self._held = self._held, ""
        return held

    def _earliest_match(self, buffer: str) -> int | None:
        """Start of the match that ends first (ties: the longer one), or None.

        "Ends first" rather than "starts first" makes the result independent of how the text was
        split into deltas: a stream cannot wait to see whether a longer, earlier-starting stop
        string will complete after a shorter one already has.
        """
        matches = [(index + len(stop), index) for stop in self._stop_strings if (index := buffer.find(stop)) >= 0]
        return min(matches)[1] if matches else None

    def _longest_partial_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of buffer that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stop_strings:
            window_start = max(0, len(buffer) - (len(stop) - 1))
            index = buffer.find(stop[0], window_start)
            while index >= 0:
                if stop.startswith(buffer[index:]):
                    longest = max(longest, len(buffer) - index)
                    break  # the earliest start is the longest suffix for this stop string
                index = buffer.find(stop[0], index + 1)
        return longest
