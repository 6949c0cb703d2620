"""Reading what a real server exports on its Prometheus endpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import ServerProcess


def scrape(server: ServerProcess) -> dict[tuple[str, frozenset], float]:
    """Every sample of the metrics endpoint: (name, labels) -> value."""
    scraped = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10)
    assert scraped.status_code == 200, f"the metrics endpoint answered {scraped.status_code}"
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }


def sample(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over the samples carrying ``labels`` (several processes)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert found, f"no {name}{labels} on the metrics endpoint"
    return sum(found)


def poll(
    server: ServerProcess,
    ready: Callable[[dict[tuple[str, frozenset], float]], Any],
    timeout: float = 60,
) -> dict[tuple[str, frozenset], float]:
    """Scrape until ``ready(samples)`` is true (an AssertionError counts as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        try:
            if ready(samples):
                return samples
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            ours = "\n".join(f"{n}{dict(ls)} {v}" for (n, ls), v in samples.items()
                             if n.startswith("modelyard_"))  # fmt: skip
            raise TimeoutError(
                f"the metrics endpoint never got there:\n{ours}\n{server.log()[-3000:]}"
            )
        time.sleep(0.2)
