"""The agent's token, cache and cost counters as Prometheus holds them.

What is here: :func:`wait_for_scrape`, which waits for a scrape of every agent replica
newer than a given time; :func:`read_metrics`, which waits so and then reads the agent's
token, cache-lookup and cost counters — the series ``monitoring.metrics`` names (the
reference agent's ``token_usage_total``, ``cache_requests_total`` and
``llm_cost_usd_total`` by default), one instant query each — and the
:class:`MetricReading` it returns. The ``load`` step reads them before and after a run to
check that the dashboard's token counter tells the same story as the LLM's own ledger. A
counter the mapping sets to null is not read (its reading is None).

Example:
    >>> before = read_metrics(prometheus, MetricsMapping(), time.time(), 20.0)  # doctest: +SKIP
    >>> before.scraped, len(before.tokens)                                      # doctest: +SKIP
    (True, 6)
"""

from __future__ import annotations

import time
from typing import Any

from agentverify.monitoring.metrics import MetricsMapping

__all__ = ["MetricReading", "Reading", "read_metrics", "wait_for_scrape"]

#: ``[(labels, value)]`` of one instant query; None: the counter is not mapped
Reading = list[tuple[dict[str, str], float]] | None


class MetricReading:
    """The agent's counters as Prometheus holds them after a scrape that began at or
    after ``since`` on every replica (``scraped`` is False when that never came)."""

    def __init__(self, tokens: Reading, cache: Reading, cost: Reading, scraped: bool) -> None:
        self.tokens, self.cache, self.cost, self.scraped = tokens, cache, cost, scraped


def wait_for_scrape(prometheus: Any, since: float, timeout: float) -> bool:
    """Whether every agent replica was scraped at or after ``since`` (Unix seconds)
    within ``timeout`` seconds: a wait of up to a scrape interval."""
    deadline = time.monotonic() + timeout
    while True:
        # `up` is written by every scrape of every replica, whatever the agent exports
        samples = prometheus.query('min(timestamp(up{job="ai-agent"}))')
        if samples and samples[0].value >= since:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def read_metrics(prometheus: Any, metrics: MetricsMapping, since: float,
                 timeout: float) -> MetricReading:
    """Wait for a scrape of every agent replica newer than ``since``, then read the
    token, cache and cost counters ``metrics`` names (one instant query each)."""
    scraped = wait_for_scrape(prometheus, since, timeout)

    def read(entry: Any) -> Reading:
        if entry is None:
            return None
        return [(s.labels, s.value) for s in prometheus.query(entry.series())]

    return MetricReading(read(metrics.tokens), read(metrics.cache), read(metrics.cost), scraped)
