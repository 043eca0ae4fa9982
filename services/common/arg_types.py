"""argparse `type=` converters that reject bad values with a message naming the rule.

argparse turns an `ArgumentTypeError` into `alise <cmd>: error: argument --top-p: must be in
(0, 1], got 1.5` and exit status 2, so every flag fails the same clear way before any work starts.

`comma_list` splits the comma-separated values of list flags (--policies fcfs,alise, --rates 1,2.5)
the same way everywhere.
"""

from __future__ import annotations

import argparse
from typing import Callable, TypeVar

from services.common.flags import is_host_port

T = TypeVar("T")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer > 0."""
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def port(text: str) -> int:
    """A TCP port in [0, 65535]; 0 asks the OS for a free one."""
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in [0, 65535], got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def probability_mass(text: str) -> float:
    """A number in (0, 1] (nucleus sampling mass)."""
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def seed(text: str) -> int:
    """A uint64 seed."""
    value = _int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"must be in [0, 2^64), got {value}")
    return value


def address(text: str) -> str:
    """host:port with a port in [1, 65535] (an IPv6 host goes in brackets: [::1]:50051)."""
    if not is_host_port(text):
        raise argparse.ArgumentTypeError(f"must be host:port with a port in [1, 65535], got {text!r}")
    return text


def comma_list(text: str, item: Callable[[str], T]) -> tuple[T, ...]:
    """The items of a comma-separated flag value, each stripped of spaces and converted by `item`, in
    order; empty items are skipped ("fcfs, alise," -> ("fcfs", "alise"); "" -> ()). An error of `item`
    (ValueError, argparse.ArgumentTypeError) propagates unchanged, so each caller reports it its way."""
    return tuple(item(part) for part in (raw.strip() for raw in text.split(",")) if part)
