"""The dashboard's panels over the whole run, kept in the journal for the report.

Grafana does not run here; the HTML report draws its panels instead. At the end of a run
(just before the shared stack, and its Prometheus, is torn down) :func:`record_panels`
runs every panel query of the dashboard as a Prometheus *range* query over the run and
stores the result in :attr:`RunJournal.panels <agentverify.report.journal.RunJournal>`,
so a saved ``results.json`` can be drawn again later without Prometheus::

    {"Request Rate": {"expr": "sum by (type) (rate(requests_total[5m]))",
                      "query": "sum by (type) (rate(requests_total[10s]))",
                      "unit": "req/s", "step": 1.0,
                      "series": [{"labels": {"type": "chat"}, "legend": "chat",
                                  "points": [[1717171717.0, 4.2], ...]}]}, ...}

The ``rate()`` windows are sized to the run (:func:`rate_window`, as Grafana's
``$__rate_interval`` would be): a five-minute window over a one-minute rehearsal would
show a fifth of the traffic. Values are converted to the unit a reader wants (seconds
of latency become ms); a point
Prometheus could not compute (``NaN``, e.g. a quantile with no requests) is ``null``,
drawn as a gap.

Example:
    >>> with PrometheusClient(stack.endpoints["prometheus"]) as prom:      # doctest: +SKIP
    ...     panels = capture_panels(prom, load_dashboard(), t0, time.time())
    >>> panels["Latency"]["unit"], len(panels["Latency"]["series"][0]["points"])  # doctest: +SKIP
    ('ms', 61)
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

from agentverify.monitoring.dashboard import (
    Dashboard,
    Panel,
    duration_seconds,
    load_dashboard,
    substitute_variables,
)
from agentverify.report.journal import RunJournal

__all__ = ["capture_panels", "record_panels", "panel_unit", "panel_step", "rate_window",
           "with_window", "MAX_POINTS"]

#: points per series at most (a long soak is stepped more coarsely, never truncated)
MAX_POINTS = 600

# Grafana unit -> (unit shown, factor applied to the values)
_GRAFANA_UNITS = {"reqps": ("req/s", 1.0), "rps": ("req/s", 1.0), "s": ("ms", 1000.0),
                  "ms": ("ms", 1.0), "percentunit": ("%", 100.0), "percent": ("%", 1.0),
                  "short": ("", 1.0), "none": ("", 1.0)}
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_RANGE = re.compile(r"\[\s*\d+(?:\.\d+)?(?:ms|s|m|h|d|w|y)\s*\]")


def panel_unit(panel: Panel) -> tuple[str, float]:
    """The unit a panel's values are shown in, and the factor to get there.

    Grafana's rate units say "per second" of *something*: the seed's error panel counts
    errors and its token panel tokens, so the title decides what is counted.

    Example:
        >>> panel_unit(load_dashboard().panel("Latency"))
        ('ms', 1000.0)
        >>> panel_unit(load_dashboard().panel("Token Usage"))
        ('tokens/s', 1.0)
    """
    unit, factor = _GRAFANA_UNITS.get(panel.unit, (panel.unit, 1.0))
    title = panel.title.lower()
    if "error" in title and unit in ("req/s", ""):
        unit = "errors/s"
    elif "token" in title and unit in ("req/s", ""):
        unit = "tokens/s"
    elif unit == "" and "rate" in title:
        unit = "/s"
    return unit, factor


def _legend(template: str, labels: dict[str, str]) -> str:
    if template:
        return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), template).strip() or "series"
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "series"


def _value(value: float, factor: float) -> float | None:
    return round(value * factor, 6) if math.isfinite(value) else None


def panel_step(start: float, end: float, max_points: int = MAX_POINTS,
               min_step: float = 1.0) -> float:
    """Seconds between points: ``min_step`` for a short run, coarser past ``max_points``.

    Example:
        >>> panel_step(0, 90), panel_step(0, 6 * 3600)
        (1.0, 37.0)
    """
    return float(max(min_step, math.ceil(max(end - start, 0.0) / max(max_points - 1, 1))))


def rate_window(step: float, scrape_interval_s: float) -> str:
    """The range of ``rate()`` windows for a run's plots: as Grafana's ``$__rate_interval``
    (four scrapes, at least a step and a scrape), and never under 10 s.

    Example:
        >>> rate_window(1.0, 1.0), rate_window(30.0, 15.0)
        ('10s', '60s')
    """
    return f"{math.ceil(max(10.0, 4 * scrape_interval_s, step + scrape_interval_s))}s"


def with_window(expr: str, window: str) -> str:
    """``expr`` with every range selector (``[5m]``, not a subquery ``[5m:1m]``) as ``window``.

    Example:
        >>> with_window("sum(rate(requests_total[5m]))", "10s")
        'sum(rate(requests_total[10s]))'
    """
    return _RANGE.sub(f"[{window}]", expr)


def capture_panels(prometheus: Any, dashboard: Dashboard, start: float, end: float, *,
                   max_points: int = MAX_POINTS, min_step: float = 1.0,
                   window: str | None = None) -> dict[str, Any]:
    """Every panel of ``dashboard`` as range queries over ``[start, end]``.

    The step is ``min_step`` (1 s) for short runs and grows so that no series has more
    than ``max_points`` points.

    A rehearsal lasts seconds to minutes, and a ``rate(...[5m])`` over one minute of
    traffic divides it by five minutes: the seed's request rate would read a fifth of
    what was sent. With ``window`` the panels' range selectors are that window instead
    (:func:`rate_window`); each panel keeps its dashboard ``expr`` and the ``query`` run.

    Args:
        prometheus: A :class:`~agentverify.monitoring.prometheus.PrometheusClient`.
        dashboard: From :func:`~agentverify.monitoring.dashboard.load_dashboard`.
        start, end: Unix seconds.
        window: A Prometheus duration for every range selector; None keeps the
            dashboard's own.

    Raises:
        StackError: Prometheus is unreachable or rejected a query.
    """
    step = panel_step(start, end, max_points, min_step)
    variables = window or f"{max(60, int(4 * step))}s"  # for Grafana's $__rate_interval
    panels: dict[str, Any] = {}
    for panel in dashboard.panels:
        unit, factor = panel_unit(panel)
        series, queries = [], []
        for target in panel.targets:
            query = substitute_variables(target.expr, window=variables)
            query = with_window(query, window) if window else query
            queries.append(query)
            for s in prometheus.query_range(query, start, end, step):
                series.append({"labels": s.labels, "legend": _legend(target.legend, s.labels),
                               "points": [[round(t, 3), _value(v, factor)] for t, v in s.values]})
        panels[panel.title] = {"expr": "; ".join(panel.exprs), "query": "; ".join(queries),
                               "unit": unit, "step": step, "series": series}
    return panels


def record_panels(journal: RunJournal, stack: Any, *, dashboard: Dashboard | None = None,
                  say: Callable[[str], None] = print, max_points: int = MAX_POINTS) -> None:
    """Capture the panels over the run into ``journal`` (call before the stack goes down).

    Marks the journal ended. Never raises: a capture that fails (Prometheus already gone,
    a bad query) is noted in ``journal.panels_error`` and said, and the run goes on.

    Example:
        >>> record_panels(session.journal, stack, say=session.say)        # doctest: +SKIP
    """
    end = time.time()
    journal.ended = end
    if not journal.scenarios:
        return  # nothing ran on this stack
    # the whole run, the stack's start-up included (its first scrapes are the baseline)
    start = journal.started
    from agentverify.monitoring.prometheus import PrometheusClient

    try:
        config = getattr(stack, "config", None)
        scrape_s = duration_seconds(config.monitoring.scrape_interval) if config else 15.0
        step = panel_step(start, end, max_points)
        with PrometheusClient(stack.endpoints["prometheus"]) as prom:
            journal.panels = capture_panels(prom, dashboard or load_dashboard(), start, end,
                                            max_points=max_points,
                                            window=rate_window(step, scrape_s))
        journal.panels_error = None
    except Exception as exc:  # the report loses its panels; the run's verdict must not change
        journal.panels_error = f"{type(exc).__name__}: {exc}"
        say(f"could not capture the dashboard panels for the report: {journal.panels_error}")
