"""The agent's token, cache and cost counters as Prometheus holds them.

What is here: :func:`read_metrics`, which waits for a scrape of every agent replica
newer than a given time and then reads ``token_usage_total``, ``cache_requests_total``
and ``llm_cost_usd_total`` (one instant query each), and the :class:`MetricReading` it
returns. The ``load`` step reads them before and after a run to check that the
dashboard's token counter tells the same story as the LLM's own ledger.

Example:
    >>> before = read_metrics(prometheus, time.time(), timeout=20.0)   # doctest: +SKIP
    >>> before.scraped, len(before.tokens)                             # doctest: +SKIP
    (True, 6)
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["CACHE_METRIC", "COST_METRIC", "TOKEN_METRIC", "MetricReading", "read_metrics"]

TOKEN_METRIC = "token_usage_total"
CACHE_METRIC = "cache_requests_total"
COST_METRIC = "llm_cost_usd_total"


class MetricReading:
    """The agent's counters as Prometheus holds them after a scrape that began at or
    after ``since`` on every replica (``scraped`` is False when that never came)."""

    def __init__(self, tokens: list[tuple[dict[str, str], float]],
                 cache: list[tuple[dict[str, str], float]],
                 cost: list[tuple[dict[str, str], float]], scraped: bool) -> None:
        self.tokens, self.cache, self.cost, self.scraped = tokens, cache, cost, scraped


def read_metrics(prometheus: Any, since: float, timeout: float) -> MetricReading:
    """Wait for a scrape of every agent replica newer than ``since``, then read the
    token, cache and cost counters (one instant query each)."""
    deadline = time.monotonic() + timeout
    scraped = False
    while True:
        samples = prometheus.query(f"min(timestamp({TOKEN_METRIC}))")
        if samples and samples[0].value >= since:
            scraped = True
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)

    def read(metric: str) -> list[tuple[dict[str, str], float]]:
        return [(s.labels, s.value) for s in prometheus.query(metric)]

    return MetricReading(read(TOKEN_METRIC), read(CACHE_METRIC), read(COST_METRIC), scraped)
