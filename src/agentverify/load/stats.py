"""Typed load results, the child's JSON-lines protocol, and SLO evaluation.

The load child (:mod:`agentverify.load.child`) writes one JSON object per line on its
stream pipe; this module turns each line into a typed value. Nothing here imports
Locust, so the parent process, the gates and the unit tests can use it freely.

=========  ====================================================================
``type``   meaning
=========  ====================================================================
snapshot   running figures, about once a second (:class:`Snapshot`)
result     the final, full result; the last line of a run (:class:`LoadResult`)
info       a progress remark (workers connected, shape), shown as is
error      the child could not run the load (:class:`ChildError`)
=========  ====================================================================

Example:
    >>> snap = parse_line('{"type": "snapshot", "t": 4.0, "users": 10, "requests": 400,'
    ...                   ' "failures": 0, "rps": 100.0, "p50_ms": 40, "p95_ms": 900,'
    ...                   ' "p99_ms": 1200}')
    >>> slo_breaches(snap, Objectives(p95_ms=800))
    ['p95_ms 900 > 800']
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from agentverify.errors import LoadTestError
from agentverify.seed import Objectives

__all__ = [
    "ChildError",
    "ChildInfo",
    "LoadResult",
    "Snapshot",
    "parse_line",
    "slo_breaches",
    "SLOAbort",
]


def _num(value: Any, default: float = 0.0) -> float:
    return default if value is None else float(value)


@dataclass(frozen=True)
class Snapshot:
    """Running figures of a load, as of ``t`` seconds after it started.

    Percentiles ``p50_ms`` / ``p95_ms`` / ``p99_ms`` are cumulative since the start (what
    the final gate sees); ``interval_p95_ms`` and ``interval_rps`` cover only the last
    interval (what a latency-over-time plot shows).
    """

    t: float
    users: int
    requests: int
    failures: int
    rps: float = 0.0
    interval_rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    interval_p95_ms: float | None = None
    cache_hits: int = 0
    cache_misses: int = 0

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    def progress_line(self) -> str:
        """``load 12s: 10 users, 85.3 req/s, p95 120 ms, errors 0 (0.0%)``."""
        rps = self.interval_rps or self.rps
        return (f"load {self.t:4.0f}s: {self.users} users, {rps:.1f} req/s, "
                f"p95 {self.p95_ms:.0f} ms, errors {self.failures} "
                f"({self.error_ratio:.1%}), {self.requests} requests")


@dataclass(frozen=True)
class LoadResult:
    """The final result of one load run.

    Attributes:
        requests: every request Locust recorded (successes and failures).
        failures: requests Locust recorded as failed (non-2xx, timeouts, bad bodies).
        duration_s: seconds from the first spawned user to the stop.
        rps: ``requests / duration_s``.
        p50_ms, p95_ms, p99_ms, avg_ms, max_ms: response times over the whole run.
        users: the most users that ran at once.
        workers: Locust worker processes (0: the child ran the users itself).
        status_codes: response count per HTTP status (``"0"``: no response).
        errors: ``{"POST /chat: HTTPError 429": count}`` as Locust grouped them.
        cache_hits, cache_misses: ``cached`` in the agent's 200 answers.
        completion_tokens, max_completion_tokens: ``usage.completion_tokens`` seen in
            the answers (cached answers carry the usage of the call that made them).
        stopped_by: ``"duration"``, ``"shape"``, ``"signal"`` (the driver stopped it),
            or ``"deadline"``.
    """

    requests: int
    failures: int
    duration_s: float
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float = 0.0
    max_ms: float = 0.0
    users: int = 0
    workers: int = 0
    status_codes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    cache_misses: int = 0
    completion_tokens: int = 0
    max_completion_tokens: int = 0
    stopped_by: str = "duration"

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def cache_hit_ratio(self) -> float | None:
        answered = self.cache_hits + self.cache_misses
        return self.cache_hits / answered if answered else None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: ``1,234 requests in 30.0s (41.1 req/s), p50/p95/p99 ...``."""
        return (f"{self.requests:,} requests in {self.duration_s:.1f}s ({self.rps:.1f} req/s), "
                f"p50/p95/p99 {self.p50_ms:.0f}/{self.p95_ms:.0f}/{self.p99_ms:.0f} ms, "
                f"{self.failures} failed ({self.error_ratio:.2%}), {self.users} users"
                + (f" on {self.workers} workers" if self.workers else ""))


@dataclass(frozen=True)
class ChildInfo:
    """A remark from the child (e.g. ``2 workers connected``)."""

    message: str


@dataclass(frozen=True)
class ChildError:
    """The child could not run the load; ``message`` says why."""

    message: str


def _build(cls: type, data: Mapping[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def parse_line(line: str) -> Snapshot | LoadResult | ChildInfo | ChildError:
    """One line of the child's stream as a typed value.

    Raises:
        LoadTestError: the line is not a JSON object of a known ``type``.
    """
    try:
        data = json.loads(line)
    except ValueError:
        raise LoadTestError(f"load child wrote a line that is not JSON: {line[:200]!r}") \
            from None
    if not isinstance(data, dict):
        raise LoadTestError(f"load child wrote {type(data).__name__}, expected an object: "
                            f"{line[:200]!r}")
    kind = data.pop("type", None)
    try:
        if kind == "snapshot":
            return _build(Snapshot, data)
        if kind == "result":
            return _build(LoadResult, data)
        if kind == "info":
            return ChildInfo(str(data.get("message", "")))
        if kind == "error":
            return ChildError(str(data.get("message", "unknown error")))
    except TypeError as exc:
        raise LoadTestError(f"load child wrote an incomplete {kind}: {exc}") from None
    raise LoadTestError(f"load child wrote an unknown line type {kind!r}: {line[:200]!r}")


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.3g}"


def slo_breaches(figures: Snapshot | LoadResult, slo: Objectives, *,
                 include_rps: bool = True) -> list[str]:
    """Every objective ``figures`` break, as ``"p95_ms 1234 > 800"``.

    ``min_rps`` is left out with ``include_rps=False`` (a running snapshot still ramping
    up is not slow, just young).
    """
    out = []
    for name in ("p50_ms", "p95_ms", "p99_ms"):
        limit = getattr(slo, name)
        measured = _num(getattr(figures, name))
        if limit is not None and measured > limit:
            out.append(f"{name} {_fmt(measured)} > {_fmt(limit)}")
    if slo.error_ratio is not None and figures.error_ratio > slo.error_ratio:
        out.append(f"error_ratio {figures.error_ratio:.4g} > {slo.error_ratio:.4g}")
    if include_rps and slo.min_rps is not None and figures.rps < slo.min_rps:
        out.append(f"rps {figures.rps:.1f} < {_fmt(slo.min_rps)}")
    return out


@dataclass(frozen=True)
class SLOAbort:
    """k6's ``abortOnFail`` for a running load: after a warm-up, the first snapshot that
    breaks an objective stops the run.

    Args:
        slo: the objectives.
        warmup_s: seconds before any verdict (connections warm, caches fill).
        min_requests: requests before any verdict (percentiles of 5 samples lie).

    Example:
        >>> abort = SLOAbort(Objectives(p95_ms=800), warmup_s=3, min_requests=50)
        >>> abort.check(Snapshot(t=2, users=5, requests=80, failures=0, p95_ms=5000))
        >>> abort.check(Snapshot(t=4, users=5, requests=80, failures=0, p95_ms=5000))
        'p95_ms 5000 > 800'
    """

    slo: Objectives
    warmup_s: float = 3.0
    min_requests: int = 50

    def check(self, snapshot: Snapshot) -> str | None:
        if snapshot.t < self.warmup_s or snapshot.requests < self.min_requests:
            return None
        breaches = slo_breaches(snapshot, self.slo, include_rps=False)
        return "; ".join(breaches) if breaches else None

