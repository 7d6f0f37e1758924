"""Grafana dashboard checks: every panel query must return data against the real stack.

A dashboard that draws nothing is a monitoring outage nobody notices until the incident.
The seed deployment's dashboard is the example: its queries name ``requests_error``,
``request_latency_bucket`` and ``token_usage``, but the agent (prometheus_client)
exposes ``requests_error_total``, ``request_latency_seconds_bucket`` and
``token_usage_total``, so three of its four panels stay empty forever.

:func:`load_dashboard` reads a classic Grafana dashboard JSON file (rows included) and
rejects malformed files with one :class:`~agentverify.errors.ConfigError` line naming
the file and the key; :func:`check_dashboard` runs every panel query as an instant query
against Prometheus, waiting (one shared deadline) until each returns data.

The shipped dashboard draws the agent's own series: :func:`dashboard_for` builds each
panel's query from ``monitoring.metrics`` (:data:`PANELS`), and
:func:`render_dashboard_json` writes it for Grafana. A panel whose metric the agent does
not export is *inconclusive* in the check (its reason shown), never passed.

Example:
    >>> dash = load_dashboard()                  # the dashboard shipped with agentverify
    >>> [p.title for p in dash.panels]
    ['Request Rate', 'Latency', 'Error Rate', 'Token Usage']
    >>> check = check_dashboard(dash, prom, timeout=60)                 # doctest: +SKIP
    >>> check.passed, f"{check.panels_with_data}/{check.panels_total}"  # doctest: +SKIP
    (True, '4/4')
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx

from agentverify.errors import ConfigError, StackError
from agentverify.monitoring.metrics import MetricsMapping, not_exported
from agentverify.monitoring.prometheus import PrometheusClient, Sample

__all__ = [
    "PanelTarget",
    "Panel",
    "Dashboard",
    "PanelResult",
    "DashboardCheck",
    "PANELS",
    "dashboard_for",
    "dashboard_path",
    "inconclusive_panels",
    "load_dashboard",
    "render_dashboard_json",
    "substitute_variables",
    "duration_seconds",
    "check_dashboard",
]

# Panels that draw no query results, so carry no targets to check.
_QUERYLESS_PANELS = frozenset({"text", "news", "dashlist", "alertlist",
                               "annolist", "welcome", "gettingstarted"})

_VARIABLE = re.compile(r"\$(?:\{(__\w+)\}|(__\w+))")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
                 "y": 31536000}


@dataclass(frozen=True)
class PanelTarget:
    """One query of a panel: the PromQL ``expr``, its legend and Grafana ``refId``."""

    expr: str
    legend: str = ""
    ref_id: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel that draws queries: its title, type, (visible) targets and Grafana unit."""

    title: str
    type: str
    targets: tuple[PanelTarget, ...]
    unit: str = ""  # fieldConfig.defaults.unit, e.g. "reqps", "s", "short"

    @property
    def exprs(self) -> list[str]:
        """The PromQL expressions of the panel's targets, in order."""
        return [t.expr for t in self.targets]


@dataclass(frozen=True)
class Dashboard:
    """A loaded dashboard: title, uid, the query panels and the file it came from."""

    title: str
    uid: str
    panels: tuple[Panel, ...]
    source: str = ""

    def panel(self, title: str) -> Panel:
        """The panel titled ``title``.

        Raises:
            KeyError: No such panel; the message lists the titles there are.
        """
        for panel in self.panels:
            if panel.title == title:
                return panel
        raise KeyError(f"{title!r} (panels: {', '.join(p.title for p in self.panels)})")


@dataclass(frozen=True)
class PanelResult:
    """The outcome of one panel query against Prometheus.

    Attributes:
        title: The panel's title.
        expr: The query as written in the dashboard (before variable substitution).
        series: How many series the last evaluation returned.
        passed: True when the query returned at least one series.
        sample: The first series, ``{"labels": {...}, "value": float}``, or None.
        error: Why Prometheus rejected the query, if it did.
        inconclusive: Why the panel could not be judged (its metric is not exported).
    """

    title: str
    expr: str
    series: int
    passed: bool
    sample: dict[str, Any] | None = None
    error: str | None = None
    inconclusive: str | None = None


@dataclass(frozen=True)
class DashboardCheck:
    """Per-panel results of :func:`check_dashboard`; one result per panel query."""

    dashboard: str
    panels: tuple[PanelResult, ...]

    @property
    def passed(self) -> bool:
        """True when every panel query returned data (and there was at least one); an
        inconclusive panel is not passed."""
        return bool(self.panels) and all(p.passed for p in self.panels)

    @property
    def inconclusive(self) -> list[PanelResult]:
        """The panels that could not be judged, with their reasons."""
        return [p for p in self.panels if p.inconclusive]

    @property
    def panels_with_data(self) -> int:
        """How many panel queries returned at least one series."""
        return sum(1 for p in self.panels if p.passed)

    @property
    def panels_total(self) -> int:
        """How many panel queries were checked."""
        return len(self.panels)

    @property
    def failed(self) -> list[PanelResult]:
        """The panel queries that returned nothing (or were rejected)."""
        return [p for p in self.panels if not p.passed and not p.inconclusive]

    def __str__(self) -> str:
        width = max((len(p.title) for p in self.panels), default=0)
        lines = [f"dashboard {self.dashboard!r}: {self.panels_with_data}/{self.panels_total} "
                 "panel queries returned data"]
        for p in self.panels:
            mark = "ok  " if p.passed else "INCONCLUSIVE" if p.inconclusive else "FAIL"
            detail = f"  error: {p.error}" if p.error else ""
            if p.inconclusive:
                detail = f"  inconclusive: {p.inconclusive}"
            lines.append(f"  {mark} {p.title:<{width}}  {p.series:>3} series  {p.expr}{detail}")
        return "\n".join(lines)


def dashboard_path() -> Path:
    """Path of the Grafana dashboard JSON shipped inside the agentverify package.

    It is the one source of the dashboard: ``agentverify compose`` renders
    ``compose/grafana/agent.json`` from it.

    Example:
        >>> dashboard_path().name
        'agent.json'
    """
    return Path(str(files("agentverify").joinpath("data", "grafana", "agent.json")))


def _expect(value: Any, kind: type | tuple[type, ...], what: str, *, source: str,
            key: str) -> Any:
    if value is None:
        raise ConfigError(f"missing (expected {what})", source=source, key=key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"expected {what}, got {type(value).__name__} {value!r:.60}",
                          source=source, key=key)
    return value


def _load_panels(raw_panels: list[Any], prefix: str, source: str) -> list[Panel]:
    panels: list[Panel] = []
    for i, raw in enumerate(raw_panels):
        key = f"{prefix}[{i}]"
        _expect(raw, dict, "a panel object", source=source, key=key)
        kind = raw.get("type", "")
        if kind == "row":  # a collapsed row keeps its panels inside it
            nested = raw.get("panels") or []
            _expect(nested, list, "a list of panels", source=source, key=f"{key}.panels")
            panels.extend(_load_panels(nested, f"{key}.panels", source))
            continue
        title = _expect(raw.get("title"), str, "the panel title as a string",
                        source=source, key=f"{key}.title")
        if kind in _QUERYLESS_PANELS and "targets" not in raw:
            continue
        targets = _expect(raw.get("targets"), list, "a list of query targets",
                          source=source, key=f"{key}.targets")
        loaded = []
        for j, target in enumerate(targets):
            tkey = f"{key}.targets[{j}]"
            _expect(target, dict, "a target object", source=source, key=tkey)
            if target.get("hide") is True:
                continue
            expr = _expect(target.get("expr"), str, "a PromQL expression string",
                           source=source, key=f"{tkey}.expr")
            if not expr.strip():
                raise ConfigError("empty (expected a PromQL expression string)",
                                  source=source, key=f"{tkey}.expr")
            legend = target.get("legendFormat") or ""
            loaded.append(PanelTarget(expr=expr, legend=str(legend),
                                      ref_id=str(target.get("refId") or "")))
        field_config = raw.get("fieldConfig")
        defaults = field_config.get("defaults") if isinstance(field_config, dict) else None
        unit = defaults.get("unit") if isinstance(defaults, dict) else None
        panels.append(Panel(title=title, type=str(kind), targets=tuple(loaded),
                            unit=str(unit or "")))
    return panels


def load_dashboard(path: str | os.PathLike[str] | None = None) -> Dashboard:
    """Read a Grafana dashboard JSON file and its panel queries.

    Accepts a classic dashboard model, or the same wrapped as ``{"dashboard": {...}}``
    (the HTTP API / provisioning export form).

    Args:
        path: The JSON file; default the dashboard shipped with agentverify.

    Raises:
        ConfigError: One line naming the file and key, e.g.
            ``compose/grafana/agent.json: panels[2].targets[0].expr: missing (...)``.

    Example:
        >>> load_dashboard().panel("Error Rate").exprs
        ['sum by (error) (rate(requests_error_total[5m]))']
    """
    file = Path(path) if path is not None else dashboard_path()
    source = str(path) if path is not None else str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the dashboard file ({exc.strerror or exc})",
                          source=source) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                          source=source) from exc
    _expect(data, dict, "a dashboard JSON object", source=source, key="(top level)")
    prefix = ""
    if "panels" not in data and isinstance(data.get("dashboard"), dict):
        data, prefix = data["dashboard"], "dashboard."
    title = _expect(data.get("title"), str, "the dashboard title as a string",
                    source=source, key=f"{prefix}title")
    raw_panels = _expect(data.get("panels"), list, "a list of panels",
                         source=source, key=f"{prefix}panels")
    panels = _load_panels(raw_panels, f"{prefix}panels", source)
    return Dashboard(title=title, uid=str(data.get("uid") or ""), panels=tuple(panels),
                     source=source)


#: the shipped dashboard's panels, by title: the ``monitoring.metrics`` entry each draws
#: and how its query is built from the mapping
PANELS: dict[str, tuple[str, Any]] = {
    "Request Rate": ("requests", lambda m: m.requests_rate("5m", by_label=True)),
    "Latency": ("latency", lambda m: m.latency_p95("5m")),
    "Error Rate": ("errors", lambda m: m.errors_rate("5m", by_label=True)),
    "Token Usage": ("tokens", lambda m: m.tokens_rate("5m")),
}


def dashboard_for(metrics: MetricsMapping) -> Dashboard:
    """The shipped dashboard with every panel query built from ``metrics`` (a panel
    whose entry is null keeps no query: :func:`inconclusive_panels` says why).

    Example:
        >>> dashboard_for(MetricsMapping()).panel("Latency").exprs[0][:29]
        'histogram_quantile(0.95, sum '
    """
    base = load_dashboard()
    panels = []
    for panel in base.panels:
        entry = PANELS.get(panel.title)
        if entry is None:
            panels.append(panel)
            continue
        key, build = entry
        targets: tuple[PanelTarget, ...] = ()
        if getattr(metrics, key) is not None:
            first = panel.targets[0] if panel.targets else PanelTarget(expr="")
            targets = (PanelTarget(expr=build(metrics), legend=first.legend,
                                   ref_id=first.ref_id),)
        panels.append(Panel(title=panel.title, type=panel.type, targets=targets))
    return Dashboard(title=base.title, uid=base.uid, panels=tuple(panels), source=base.source)


def inconclusive_panels(metrics: MetricsMapping, exported: set[str] | None,
                        where: str = "the agent's /metrics") -> dict[str, str]:
    """Panel title -> why it cannot be judged: its metric is null in ``metrics``, or
    missing from ``exported`` (the sample names of a replica's ``/metrics``)."""
    out = {}
    for title, (key, _) in PANELS.items():
        reason = not_exported(metrics, key, exported, where)
        if reason:
            out[title] = reason
    return out


def render_dashboard_json(metrics: MetricsMapping) -> str:
    """The shipped dashboard JSON for Grafana with queries built from ``metrics`` (the
    file as shipped when they are the default names)."""
    text = dashboard_path().read_text(encoding="utf-8")
    data = json.loads(text)
    changed = False
    for raw in data.get("panels", []):
        entry = PANELS.get(raw.get("title", ""))
        if entry is None:
            continue
        key, build = entry
        if getattr(metrics, key) is None:
            raw["targets"] = []
            raw["description"] = metrics.missing(key)
            changed = True
            continue
        for target in raw.get("targets", [])[:1]:
            expr = build(metrics)
            if target.get("expr") != expr:
                target["expr"] = expr
                changed = True
    return json.dumps(data, indent=2) + "\n" if changed else text


def duration_seconds(window: str) -> float:
    """Seconds in a Prometheus duration (``"90s"``, ``"5m"``, ``"1h"``).

    Raises:
        ValueError: Not a single-unit Prometheus duration.

    Example:
        >>> duration_seconds("5m")
        300.0
    """
    match = _DURATION.match(window)
    if not match:
        raise ValueError(f"window {window!r}: expected a Prometheus duration such as '1m'")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def substitute_variables(expr: str, *, window: str = "1m") -> str:
    """Replace Grafana's built-in time variables so Prometheus can run the query.

    ``$__rate_interval``, ``$__interval`` and ``$__range`` (also as ``${...}``) become
    ``window``; ``$__interval_ms``, ``$__range_ms`` and ``$__range_s`` become numbers.
    Other variables are left as they are.

    Example:
        >>> substitute_variables("rate(requests_total[$__rate_interval])", window="2m")
        'rate(requests_total[2m])'
    """
    seconds = duration_seconds(window)
    values = {
        "__rate_interval": window,
        "__interval": window,
        "__range": window,
        "__interval_ms": f"{round(seconds * 1000)}",
        "__range_ms": f"{round(seconds * 1000)}",
        "__range_s": f"{round(seconds)}",
    }

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return _VARIABLE.sub(replace, expr)


def _result(title: str, expr: str, samples: list[Sample] | None,
            error: str | None = None) -> PanelResult:
    samples = samples or []
    first = {"labels": samples[0].labels, "value": samples[0].value} if samples else None
    return PanelResult(title=title, expr=expr, series=len(samples), passed=bool(samples),
                       sample=first, error=error)


def check_dashboard(dashboard: Dashboard, prom: PrometheusClient, *, timeout: float = 60.0,
                    window: str = "1m", interval: float = 1.0,
                    inconclusive: Mapping[str, str] | None = None) -> DashboardCheck:
    """Run every panel query as an instant query and report which ones return data.

    All queries share one deadline: they are polled together until each has returned
    at least one series or ``timeout`` passes (a ``rate()`` needs two scrapes first).
    A query Prometheus rejects fails its panel with the error; an unreachable
    Prometheus raises.

    Args:
        dashboard: From :func:`load_dashboard`.
        prom: A client for the stack's Prometheus.
        timeout: Seconds to wait for data, for all panels together.
        window: What Grafana's ``$__rate_interval`` / ``$__interval`` / ``$__range``
            stand for.
        interval: Seconds between polls.
        inconclusive: Panel title -> why it cannot be judged (not queried; reported
            inconclusive with the reason).

    Raises:
        StackError: Prometheus cannot be reached.

    Example:
        >>> print(check_dashboard(load_dashboard(), prom))                 # doctest: +SKIP
        dashboard 'AI Agent Dashboard': 4/4 panel queries returned data
          ok   Request Rate    2 series  sum by (type) (rate(requests_total[5m]))
          ...
    """
    skip = dict(inconclusive or {})
    pending = {(i, j): (panel.title, target.expr,
                        substitute_variables(target.expr, window=window))
               for i, panel in enumerate(dashboard.panels) if panel.title not in skip
               for j, target in enumerate(panel.targets)}
    results: dict[tuple[int, int], PanelResult] = {
        (i, 0): PanelResult(title=panel.title, expr=panel.exprs[0] if panel.exprs else "",
                            series=0, passed=False, inconclusive=skip[panel.title])
        for i, panel in enumerate(dashboard.panels) if panel.title in skip}
    deadline = time.monotonic() + timeout
    while True:
        for key, (title, expr, query) in list(pending.items()):
            try:
                samples = prom.query(query)
            except StackError as exc:
                if isinstance(exc.__cause__, httpx.HTTPError):
                    raise  # Prometheus itself is unreachable: no panel can be judged
                results[key] = _result(title, expr, None, error=str(exc))
                del pending[key]
                continue
            results[key] = _result(title, expr, samples)
            if samples:
                del pending[key]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(interval, max(deadline - time.monotonic(), 0.0)))
    ordered = tuple(results[key] for key in sorted(results))
    return DashboardCheck(dashboard=dashboard.title, panels=ordered)
