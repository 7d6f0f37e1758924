"""The run journal: typed results that every report writer reads.

One :class:`RunJournal` per run collects a :class:`ScenarioResult` per rehearsal (facts,
gates, step timings, error, series over time, the failing service's last log lines), a
:attr:`~RunJournal.timeline` of :class:`TimelineEvent` (scenarios, steps, rollouts,
faults, alerts, drills, ...) and, at the end of the run, the dashboard panels' range
queries (:attr:`~RunJournal.panels`). The JSON, HTML, JUnit and terminal writers all
read the journal's JSON form (:meth:`RunJournal.to_json`), never the tests, so they
cannot disagree, and a saved ``results.json`` renders exactly as the live run did.

Times are unix seconds (``time.time()``) unless a name says otherwise.

Example:
    >>> journal = RunJournal(env="staging", backend="local")
    >>> result = ScenarioResult(name="smoke", started=100.0, ended=112.5)
    >>> journal.add(result)
    >>> ev = journal.event("fault", "redis latency 200 ms", t=104.0, end=108.0, target="redis")
    >>> [e["kind"] for e in journal.to_json()["timeline"]]
    ['scenario', 'fault']
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from agentverify.errors import UsageError
from agentverify.gates import GateResult

__all__ = ["RunJournal", "ScenarioResult", "StepResult", "TimelineEvent", "TimeSeries",
           "EVENT_KINDS", "read_journal"]

#: Kinds of timeline event the report knows how to draw; any other string is kept and
#: drawn as a plain marker.
EVENT_KINDS = ("scenario", "step", "rollout", "fault", "alert", "notify", "drill", "runbook",
               "kill")


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class TimelineEvent:
    """Something that happened during the run, at ``t`` (until ``end``, if it lasted).

    Attributes:
        t: Unix seconds when it happened (or began).
        kind: ``scenario``, ``step``, ``rollout``, ``fault``, ``alert``, ``notify``,
            ``drill``, ``runbook``, ``kill``, ... (see :data:`EVENT_KINDS`).
        label: What a reader sees on the plot, e.g. ``"rolling_update v2"``.
        end: Unix seconds when it ended; None for an instant (an alert firing).
        scenario: The scenario it belongs to (None for run-level events).
        detail: Anything else worth keeping (JSON-serialisable).

    Example:
        >>> TimelineEvent(t=10.0, kind="alert", label="AgentHighErrorRate").to_json()["end"]
    """

    t: float
    kind: str
    label: str
    end: float | None = None
    scenario: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"t": _round(self.t), "end": _round(self.end), "kind": self.kind,
                "label": self.label, "scenario": self.scenario, "detail": self.detail}


@dataclass
class TimeSeries(Sequence[list[float]]):
    """A measured figure over time: ``[[t, value], ...]`` with its unit and threshold.

    ``t`` is seconds since ``t0`` (unix seconds; None when unknown). It behaves as the
    list of its points (``len``, iteration, indexing), so code that stored plain lists
    keeps working. ``threshold`` is drawn as a line; ``gate`` names a fact whose
    numeric gate threshold is drawn when ``threshold`` is not given.

    Example:
        >>> s = TimeSeries([[0.0, 12.0], [1.0, 30.5]], unit="ms", gate="probe_p95_ms")
        >>> len(s), s[1][1], s.to_json()["unit"]
        (2, 30.5, 'ms')
    """

    points: list[list[float]] = field(default_factory=list)
    unit: str = ""
    threshold: float | None = None
    threshold_label: str = ""
    gate: str | None = None
    t0: float | None = None

    @classmethod
    def of(cls, value: TimeSeries | Sequence[Sequence[float]]) -> TimeSeries:
        """A :class:`TimeSeries` from itself or from a plain list of points."""
        if isinstance(value, TimeSeries):
            return value
        return cls([list(p) for p in value])

    @overload
    def __getitem__(self, index: int) -> list[float]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[list[float]]: ...

    def __getitem__(self, index: int | slice) -> list[float] | Sequence[list[float]]:
        return self.points[index]

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Iterator[list[float]]:
        return iter(self.points)

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "threshold": self.threshold,
                "threshold_label": self.threshold_label, "gate": self.gate,
                "t0": _round(self.t0), "points": self.points}


@dataclass
class StepResult:
    """One step of a scenario: its type, when it started, seconds taken, facts, error."""

    index: int
    type: str
    seconds: float
    facts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    started: float | None = None
    #: seconds the step spent waiting on purpose, by reason (a load's duration, a bake,
    #: a fault held, a deregistration delay, a deliberate timeout): what a gate costs
    #: by design, as opposed to what agentverify itself costs
    waits: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None

    def waited(self, reason: str, seconds: float) -> None:
        self.waits[reason] = self.waits.get(reason, 0.0) + seconds

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "type": self.type, "seconds": round(self.seconds, 3),
                "started": _round(self.started), "facts": self.facts, "error": self.error,
                "waits": {k: round(v, 3) for k, v in self.waits.items()}}


@dataclass
class ScenarioResult:
    """The measured facts and gate verdicts of one scenario.

    Attributes:
        started, ended: Unix seconds the scenario's steps began and ended (None when it
            never ran, e.g. the stack did not come up; the journal then fills them in).
        series: Name -> :class:`TimeSeries` (a plain list of points is accepted).
        logs: Instance -> its last log lines, for a failed scenario.
    """

    name: str
    file: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    series: dict[str, TimeSeries] = field(default_factory=dict)
    started: float | None = None
    ended: float | None = None
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None and all(g.passed for g in self.gates)

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def __repr__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"ScenarioResult({self.name!r} {verdict}, {len(self.gates)} gate(s), "
                f"{len(self.failed_gates)} failed{', error' if self.error else ''})")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "passed": self.passed,
                "seconds": round(self.seconds, 3), "error": self.error,
                "started": _round(self.started), "ended": _round(self.ended),
                "facts": self.facts, "gates": [g.to_json() for g in self.gates],
                "steps": [s.to_json() for s in self.steps],
                "series": {k: TimeSeries.of(v).to_json() for k, v in self.series.items()},
                "logs": self.logs}


@dataclass
class RunJournal:
    """Everything one run measured.

    Attributes:
        timeline: :class:`TimelineEvent` in the order they were recorded.
        panels: The dashboard panels over the run, ``{title: {"expr", "unit",
            "series": [{"labels": {...}, "points": [[unix_s, value], ...]}]}}``
            (filled at the end of the run, see :mod:`agentverify.report.panels`).
        panels_error: Why the panels could not be captured, if they could not.
        ended: Unix seconds the run ended (None while it runs).
    """

    env: str
    backend: str
    started: float = field(default_factory=time.time)
    scenarios: list[ScenarioResult] = field(default_factory=list)
    stack: dict[str, Any] | None = None
    timeline: list[TimelineEvent] = field(default_factory=list)
    panels: dict[str, Any] = field(default_factory=dict)
    panels_error: str | None = None
    ended: float | None = None
    #: every instance start of the run: ``{"instance", "role", "started", "ready",
    #: "scenario"}`` (unix s; ready None when it never got ready)
    starts: list[dict[str, Any]] = field(default_factory=list)
    #: every stack brought up: ``{"run_id", "started", "up_s", "scenario"}``
    stacks: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: ScenarioResult) -> None:
        """Journal a finished scenario (and its band on the timeline)."""
        if result.ended is None:
            result.ended = time.time()
        if result.started is None:
            result.started = result.ended - result.seconds
        with self._lock:
            self.scenarios.append(result)
            self.timeline.append(TimelineEvent(
                t=result.started, end=result.ended, kind="scenario", label=result.name,
                scenario=result.name, detail={"passed": result.passed}))

    def event(self, kind: str, label: str, *, t: float | None = None, end: float | None = None,
              scenario: str | None = None, **detail: Any) -> TimelineEvent:
        """Record one timeline event (now, unless ``t`` is given) and return it.

        Example:
            >>> journal.event("alert", "AgentHighErrorRate", scenario="api-error",
            ...               state="firing")                             # doctest: +SKIP
        """
        ev = TimelineEvent(t=time.time() if t is None else t, kind=kind, label=label,
                           end=end, scenario=scenario, detail=detail)
        with self._lock:
            self.timeline.append(ev)
        return ev

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.scenarios)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            scenarios = [s.to_json() for s in self.scenarios]
            timeline = sorted((e.to_json() for e in self.timeline), key=lambda e: e["t"])
        return {"env": self.env, "backend": self.backend,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                "started_unix": round(self.started, 3), "ended_unix": _round(self.ended),
                "passed": all(s["passed"] for s in scenarios),
                "stack": self.stack, "scenarios": scenarios, "timeline": timeline,
                "panels": self.panels, "panels_error": self.panels_error,
                "starts": list(self.starts), "stacks": list(self.stacks)}

    def write_json(self, path: Path, redact=lambda data: data) -> Path:
        """Write atomically (a crash never leaves half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(redact(self.to_json()), indent=2, default=str) + "\n")
        os.replace(tmp, path)
        return path


def read_journal(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A saved journal (``results.json``) as the writers read it.

    Raises:
        UsageError: One line naming the file and what is wrong with it (missing, not
            JSON, not an agentverify journal).

    Example:
        >>> data = read_journal("reports/results.json")                   # doctest: +SKIP
        >>> data["env"], len(data["scenarios"])                           # doctest: +SKIP
        ('staging', 6)
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the journal ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not an agentverify journal (not valid JSON: {exc})") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not an agentverify journal (expected a JSON object with "
                         f"env, backend and scenarios, got {type(data).__name__})")
    missing = [k for k in ("env", "backend", "scenarios") if k not in data]
    if missing or not isinstance(data["scenarios"], list):
        raise UsageError(f"{path}: not an agentverify journal (expected keys env, backend and a "
                         f"list of scenarios; missing: {', '.join(missing) or 'scenarios list'})")
    for i, s in enumerate(data["scenarios"]):
        if not isinstance(s, dict) or not {"name", "passed", "gates"} <= set(s):
            raise UsageError(f"{path}: scenarios[{i}]: expected an object with name, passed "
                             f"and gates")
        if not isinstance(s["gates"], list) or not all(
                isinstance(g, dict) and {"name", "threshold", "measured", "passed"} <= set(g)
                for g in s["gates"]):
            raise UsageError(f"{path}: scenarios[{i}].gates: expected a list of objects with "
                             f"name, threshold, measured and passed")
    # journals written before the timeline and the panels existed render as well
    data.setdefault("timeline", [])
    data.setdefault("panels", {})
    return data
