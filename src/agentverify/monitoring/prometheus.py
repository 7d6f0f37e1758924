"""Clients for the Prometheus HTTP API and the Alertmanager v2 API.

Rehearsals read the stack's own monitoring the way an operator would: instant and
range queries, scrape targets, firing alerts. Every call is synchronous (httpx) and
every failure — a refused connection, a timeout, a non-JSON body, a Prometheus
``{"status": "error"}`` answer — surfaces as one :class:`~agentverify.errors.StackError`
naming the server, translated in :func:`_translate_errors` only.

Example:
    >>> prom = PrometheusClient("http://127.0.0.1:9090")           # doctest: +SKIP
    >>> prom.wait_for("sum(rate(requests_total[1m]))")             # doctest: +SKIP
    [Sample(labels={}, value=12.5, timestamp=1717171717.0)]
"""

from __future__ import annotations

import contextlib
import time as _time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from agentverify import _http
from agentverify.errors import StackError

__all__ = [
    "Sample",
    "Series",
    "Target",
    "Alert",
    "Rule",
    "PrometheusClient",
    "AlertmanagerClient",
]

TimeLike = float | int | datetime | str
"""A point in time for the API: unix seconds, a datetime, or an RFC 3339 string."""


@dataclass(frozen=True)
class Sample:
    """One element of an instant vector (or a scalar, with empty labels)."""

    labels: dict[str, str]
    value: float
    timestamp: float = 0.0


@dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and ``(timestamp, value)`` points."""

    labels: dict[str, str]
    values: list[tuple[float, float]]


@dataclass(frozen=True)
class Target:
    """An active scrape target as ``/api/v1/targets`` reports it."""

    job: str
    instance: str
    health: str  # "up" | "down" | "unknown"
    last_error: str
    scrape_url: str
    labels: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        error = f" ({self.last_error})" if self.last_error else ""
        return f"{self.job}/{self.instance}: {self.health}{error}"


@dataclass(frozen=True)
class Alert:
    """A pending or firing alert as ``/api/v1/alerts`` reports it."""

    name: str
    state: str  # "pending" | "firing"
    labels: dict[str, str]
    annotations: dict[str, str]
    active_at: str = ""
    value: str = ""


@dataclass(frozen=True)
class Rule:
    """An alerting or recording rule as ``/api/v1/rules`` reports it."""

    name: str
    type: str  # "alerting" | "recording"
    query: str
    group: str
    health: str
    state: str = ""  # alerting rules only: "inactive" | "pending" | "firing"
    last_error: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _translate_errors(service: str, base_url: str) -> Iterator[None]:
    """The one place httpx errors become :class:`StackError` (cause kept in ``__cause__``)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise StackError(f"{service} at {base_url}: timed out ({exc.__class__.__name__}: "
                         f"{exc}). Hint: is it overloaded, or is the timeout too short?") from exc
    except httpx.TransportError as exc:
        raise StackError(f"{service} at {base_url}: cannot connect ({exc.__class__.__name__}: "
                         f"{exc}). Hint: is it running and listening on that address?") from exc
    except httpx.HTTPError as exc:
        raise StackError(f"{service} at {base_url}: {exc.__class__.__name__}: {exc}") from exc


def _is_transient(exc: StackError) -> bool:
    """A connection problem worth retrying while polling (not a bad query)."""
    return isinstance(exc.__cause__, httpx.TransportError)


def _api_time(value: TimeLike) -> str:
    if isinstance(value, datetime):
        return f"{value.timestamp():.3f}"
    if isinstance(value, (int, float)):
        return f"{float(value):.3f}"
    return value


def _api_step(step: float | int | str) -> str:
    return step if isinstance(step, str) else f"{float(step):g}"


def _summarise(samples: list[Sample], limit: int = 3) -> str:
    if not samples:
        return "empty result"
    shown = ", ".join(f"{s.labels or '{}'} {s.value:g}" for s in samples[:limit])
    more = f" (+{len(samples) - limit} more)" if len(samples) > limit else ""
    return f"{len(samples)} series: {shown}{more}"


class PrometheusClient:
    """A small synchronous client for one Prometheus server's HTTP API.

    Args:
        base_url: Where Prometheus listens, e.g. ``http://127.0.0.1:9090``.
        timeout: Seconds for each HTTP request.

    Example:
        >>> with PrometheusClient("http://127.0.0.1:9090") as prom:   # doctest: +SKIP
        ...     prom.wait_for_targets("ai-agent", 3)
        ...     [s.value for s in prom.query('up{job="ai-agent"}')]
        [1.0, 1.0, 1.0]
    """

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = _http.new_client(base_url=self.base_url, timeout=timeout)

    def __repr__(self) -> str:
        return f"PrometheusClient({self.base_url!r})"

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying HTTP connections (idempotent)."""
        self._http.close()

    # -- transport -----------------------------------------------------------------

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call ``/api/v1/...`` and return its ``data``; every failure is a StackError."""
        where = f"Prometheus at {self.base_url}"
        with _translate_errors("Prometheus", self.base_url):
            response = self._http.request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError as exc:
            raise StackError(f"{where}: {method} {path} answered HTTP {response.status_code} "
                             f"with a non-JSON body: {response.text[:200]!r}") from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", body) if isinstance(body, dict) else body
            kind = body.get("errorType", "error") if isinstance(body, dict) else "error"
            raise StackError(f"{where}: {method} {path} failed "
                             f"(HTTP {response.status_code}, {kind}): {error}")
        return body.get("data")

    # -- queries -------------------------------------------------------------------

    def query(self, expr: str, *, time: TimeLike | None = None) -> list[Sample]:
        """Evaluate ``expr`` as an instant query.

        Args:
            expr: A PromQL expression.
            time: Evaluation time (unix seconds, datetime or RFC 3339); default now.

        Returns:
            One :class:`Sample` per series; a scalar (or string) result becomes one
            sample with empty labels.

        Raises:
            StackError: Prometheus is unreachable or rejected the expression.

        Example:
            >>> prom.query("sum by (type) (rate(requests_total[1m]))")   # doctest: +SKIP
            [Sample(labels={'type': 'chat'}, value=4.2, timestamp=...)]
        """
        params = {"query": expr}
        if time is not None:
            params["time"] = _api_time(time)
        data = self._api("POST", "/api/v1/query", data=params)
        kind, result = data.get("resultType"), data.get("result")
        if kind in ("scalar", "string"):
            ts, value = result
            return [Sample({}, float(value), float(ts))]
        if kind == "matrix":  # e.g. a bare range selector `up[1m]`: keep each last point
            return [Sample(dict(s["metric"]), float(s["values"][-1][1]),
                           float(s["values"][-1][0])) for s in result if s.get("values")]
        return [Sample(dict(s["metric"]), float(s["value"][1]), float(s["value"][0]))
                for s in result]

    def query_range(self, expr: str, start: TimeLike, end: TimeLike,
                    step: float | str) -> list[Series]:
        """Evaluate ``expr`` over ``[start, end]`` every ``step`` (seconds or ``"15s"``).

        Example:
            >>> now = time.time()                                          # doctest: +SKIP
            >>> prom.query_range("up", now - 60, now, 5)[0].values[:2]     # doctest: +SKIP
            [(1717171657.0, 1.0), (1717171662.0, 1.0)]
        """
        params = {"query": expr, "start": _api_time(start), "end": _api_time(end),
                  "step": _api_step(step)}
        data = self._api("POST", "/api/v1/query_range", data=params)
        return [Series(dict(s["metric"]), [(float(t), float(v)) for t, v in s["values"]])
                for s in data.get("result", [])]

    def targets(self, job: str | None = None) -> list[Target]:
        """Active scrape targets, optionally only those of ``job``.

        Example:
            >>> [str(t) for t in prom.targets("ai-agent")]                 # doctest: +SKIP
            ['ai-agent/127.0.0.1:8000: up']
        """
        data = self._api("GET", "/api/v1/targets", params={"state": "active"})
        found = []
        for raw in data.get("activeTargets", []):
            labels = dict(raw.get("labels", {}))
            target = Target(job=labels.get("job", raw.get("scrapePool", "")),
                            instance=labels.get("instance", ""),
                            health=raw.get("health", "unknown"),
                            last_error=raw.get("lastError", ""),
                            scrape_url=raw.get("scrapeUrl", ""),
                            labels=labels)
            if job is None or target.job == job:
                found.append(target)
        return found

    def alerts(self) -> list[Alert]:
        """Alerts Prometheus currently holds as pending or firing.

        Example:
            >>> [(a.name, a.state) for a in prom.alerts()]                 # doctest: +SKIP
            [('AgentReplicaDown', 'firing')]
        """
        data = self._api("GET", "/api/v1/alerts")
        return [Alert(name=raw.get("labels", {}).get("alertname", ""),
                      state=raw.get("state", ""),
                      labels=dict(raw.get("labels", {})),
                      annotations=dict(raw.get("annotations", {})),
                      active_at=raw.get("activeAt", ""),
                      value=str(raw.get("value", "")))
                for raw in data.get("alerts", [])]

    def rules(self) -> list[Rule]:
        """Every loaded alerting and recording rule, flattened across groups.

        Example:
            >>> [r.name for r in prom.rules() if r.type == "alerting"]     # doctest: +SKIP
            ['AgentReplicaDown', 'AgentHighErrorRate']
        """
        data = self._api("GET", "/api/v1/rules")
        return [Rule(name=raw.get("name", ""), type=raw.get("type", ""),
                     query=raw.get("query", ""), group=group.get("name", ""),
                     health=raw.get("health", ""), state=raw.get("state", ""),
                     last_error=raw.get("lastError", ""),
                     labels=dict(raw.get("labels", {})))
                for group in data.get("groups", []) for raw in group.get("rules", [])]

    # -- waiting -------------------------------------------------------------------

    def wait_for(self, expr: str,
                 predicate: Callable[[list[Sample]], bool] = lambda samples: bool(samples),
                 *, timeout: float = 30.0, interval: float = 0.25) -> list[Sample]:
        """Poll ``expr`` until ``predicate(samples)`` holds; return those samples.

        A ``rate()`` needs two scrapes before it has a value, so a fresh stack has to
        wait; connection errors are retried until the deadline, a rejected expression
        is raised at once.

        Args:
            expr: A PromQL expression, evaluated as an instant query.
            predicate: Decides whether the result is what we wait for; default non-empty.
            timeout: Seconds before giving up.
            interval: Seconds between polls.

        Raises:
            StackError: On timeout, naming the expression, the last result and the timeout.

        Example:
            >>> prom.wait_for('up{job="ai-agent"}',                        # doctest: +SKIP
            ...               lambda s: len(s) == 3 and all(x.value == 1 for x in s))
        """
        deadline = _time.monotonic() + timeout
        last = "no answer yet"
        while True:
            try:
                samples = self.query(expr)
            except StackError as exc:
                if not _is_transient(exc):
                    raise
                last = str(exc)
            else:
                if predicate(samples):
                    return samples
                last = _summarise(samples)
            if _time.monotonic() >= deadline:
                raise StackError(
                    f"Prometheus at {self.base_url}: {expr!r} did not reach the expected "
                    f"result within {timeout:g}s; last result: {last}. Hint: check that the "
                    "target is scraped (targets()) and that the metric name is exposed.")
            _time.sleep(min(interval, max(deadline - _time.monotonic(), 0.0)))

    def wait_for_targets(self, job: str, expected_instances: set[str] | int, *,
                         health: str = "up", timeout: float = 30.0,
                         interval: float = 0.25) -> list[Target]:
        """Wait until exactly the expected targets of ``job`` have the given health.

        Args:
            job: The scrape job, e.g. ``"ai-agent"``.
            expected_instances: The ``instance`` labels that must have ``health``
                (exactly these), or how many targets must have it.
            health: ``"up"``, ``"down"`` or ``"unknown"``.
            timeout: Seconds before giving up.
            interval: Seconds between polls.

        Returns:
            The job's targets with that health.

        Raises:
            StackError: On timeout, listing every target of the job with its last error.

        Example:
            >>> prom.wait_for_targets("ai-agent", {"127.0.0.1:8000", "127.0.0.1:8001"})
            ...                                                            # doctest: +SKIP
        """
        deadline = _time.monotonic() + timeout
        current: list[Target] = []
        while True:
            try:
                current = self.targets(job)
            except StackError as exc:
                if not _is_transient(exc):
                    raise
            matching = [t for t in current if t.health == health]
            if isinstance(expected_instances, int):
                done = len(matching) == expected_instances
            else:
                done = {t.instance for t in matching} == set(expected_instances)
            if done:
                return matching
            if _time.monotonic() >= deadline:
                want = (f"{expected_instances} target(s)" if isinstance(expected_instances, int)
                        else ", ".join(sorted(expected_instances)))
                seen = "; ".join(str(t) for t in current) or "no targets at all"
                raise StackError(
                    f"Prometheus at {self.base_url}: job {job!r}: expected {want} to be "
                    f"{health} within {timeout:g}s; targets now: {seen}.")
            _time.sleep(min(interval, max(deadline - _time.monotonic(), 0.0)))

    # -- lifecycle -----------------------------------------------------------------

    def reload(self) -> None:
        """Ask Prometheus to re-read its configuration (``POST /-/reload``).

        Raises:
            StackError: The reload failed, or Prometheus runs without
                ``--web.enable-lifecycle``.
        """
        with _translate_errors("Prometheus", self.base_url):
            response = self._http.post("/-/reload")
        if response.status_code != 200:
            hint = (" Hint: start Prometheus with --web.enable-lifecycle."
                    if response.status_code == 403 else "")
            raise StackError(f"Prometheus at {self.base_url}: reload failed (HTTP "
                             f"{response.status_code}): {response.text.strip()[:300]}.{hint}")

    def ready(self) -> bool:
        """True when ``/-/ready`` answers 200; False when not ready or unreachable."""
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False


class AlertmanagerClient:
    """A small synchronous client for Alertmanager's v2 API.

    Args:
        base_url: Where Alertmanager listens, e.g. ``http://127.0.0.1:9093``.
        timeout: Seconds for each HTTP request.

    Example:
        >>> am = AlertmanagerClient("http://127.0.0.1:9093")               # doctest: +SKIP
        >>> am.wait_for_alert("AgentReplicaDown", timeout=60)["labels"]    # doctest: +SKIP
        {'alertname': 'AgentReplicaDown', 'instance': '127.0.0.1:8001', ...}
    """

    def __init__(self, base_url: str, *, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = _http.new_client(base_url=self.base_url, timeout=timeout)

    def __repr__(self) -> str:
        return f"AlertmanagerClient({self.base_url!r})"

    def __enter__(self) -> AlertmanagerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying HTTP connections (idempotent)."""
        self._http.close()

    def alerts(self, active: bool = True) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds, as the API returns them.

        Args:
            active: Only alerts that would notify (not silenced, not inhibited);
                ``False`` returns every alert, suppressed ones included.

        Raises:
            StackError: Alertmanager is unreachable or answered with an error.
        """
        params = {"silenced": "false", "inhibited": "false"} if active else {}
        with _translate_errors("Alertmanager", self.base_url):
            response = self._http.get("/api/v2/alerts", params=params)
        try:
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPStatusError, ValueError) as exc:
            raise StackError(f"Alertmanager at {self.base_url}: GET /api/v2/alerts answered "
                             f"HTTP {response.status_code}: {response.text[:200]!r}") from exc
        return body if isinstance(body, list) else []

    def wait_for_alert(self, name: str, timeout: float = 30.0, *,
                       interval: float = 0.5) -> dict[str, Any]:
        """Wait until an active alert named ``name`` (label ``alertname``) arrives.

        Raises:
            StackError: On timeout, naming the alerts that are there instead.

        Example:
            >>> am.wait_for_alert("AgentHighErrorRate", timeout=60)        # doctest: +SKIP
        """
        deadline = _time.monotonic() + timeout
        seen: list[str] = []
        while True:
            try:
                current = self.alerts(active=True)
            except StackError as exc:
                if not _is_transient(exc):
                    raise
                current = []
            for alert in current:
                if alert.get("labels", {}).get("alertname") == name:
                    return alert
            seen = sorted({a.get("labels", {}).get("alertname", "?") for a in current})
            if _time.monotonic() >= deadline:
                raise StackError(
                    f"Alertmanager at {self.base_url}: alert {name!r} did not arrive within "
                    f"{timeout:g}s; active alerts: {', '.join(seen) or 'none'}. Hint: check "
                    "the rule in Prometheus (rules()) and Prometheus' alerting config.")
            _time.sleep(min(interval, max(deadline - _time.monotonic(), 0.0)))
