"""Scraping a service's /metrics over real HTTP and reading samples out of the parsed text."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


async def scrape(port: int, host: str = "127.0.0.1", path: str = "/metrics") -> dict[str, list[Sample]]:
    """GET http://host:port/metrics (off the event loop), parsed: sample name -> its samples."""
    text = await asyncio.to_thread(_get, f"http://{host}:{port}{path}")
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """The one sample called `name` whose labels include `labels` (AssertionError otherwise)."""
    matches = [s for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} samples in {samples.get(name)}"
    return matches[0].value


async def wait_for_value(port: int, name: str, expected: float, timeout_s: float = 5.0, **labels: str) -> dict:
    """Scrapes until `name` reads `expected` (a counter the service updates just after it answered);
    returns the last scrape; AssertionError with the last value on timeout."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        samples = await scrape(port)
        got = value(samples, name, **labels) if name in samples else None
        if got == expected:
            return samples
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{name}{labels} is {got}, expected {expected}")
        await asyncio.sleep(0.05)
