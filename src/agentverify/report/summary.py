"""The run at a glance, from a journal's JSON: headline, first failure, terminal summary.

The pytest plugin's terminal summary and ``agentverify report`` print the same lines
(:func:`summary_lines`); the HTML header uses the same facts (:func:`run_overview`,
:func:`first_failure`), so a red CI log and the report never tell different stories.

Example:
    >>> data = journal.to_json()                                          # doctest: +SKIP
    >>> for line in summary_lines(data, report_dir="reports"):            # doctest: +SKIP
    ...     print(line.text)
    1 of 2 scenarios passed; first failing gate: always-red › chat_status: measured 200, threshold == 201
    smoke: PASSED in 31.2s
      PASS unhealthy_replicas: measured 0, threshold == 0
    ...
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentverify.gates import format_value

__all__ = ["SummaryLine", "FirstFailure", "first_failure", "run_overview", "summary_lines",
           "summary_title", "gate_line", "REPORT_FILES"]

#: the files write_reports puts in the report directory
REPORT_FILES = ("results.json", "results.html", "junit.xml")


@dataclass(frozen=True)
class SummaryLine:
    """One line of the summary; ``status`` is ``pass``, ``fail``, ``inconclusive`` or ``info``.

    Example:
        >>> SummaryLine("smoke: PASSED in 31.2s", "pass", bold=True).status
        'pass'
    """

    text: str
    status: str = "info"
    bold: bool = False


@dataclass(frozen=True)
class FirstFailure:
    """Where a run first went red: the scenario and its first failed gate (or its error).

    Example:
        >>> str(FirstFailure("always-red", "chat_status", 200, "== 201"))
        'always-red › chat_status: measured 200, threshold == 201'
    """

    scenario: str
    gate: str | None = None
    measured: Any = None
    threshold: str | None = None
    error: str | None = None

    def __str__(self) -> str:
        if self.gate is not None:
            return (f"{self.scenario} › {self.gate}: measured {format_value(self.measured)}, "
                    f"threshold {self.threshold}")
        first = (self.error or "failed").splitlines()[0]
        return f"{self.scenario}: {first}"


def gate_line(gate: dict[str, Any]) -> str:
    """``PASS name: measured X, threshold Y`` (as :meth:`GateResult.line` writes it).

    Example:
        >>> gate_line({"name": "p95_ms", "measured": 512.3, "threshold": "<= 800", "passed": True})
        'PASS p95_ms: measured 512.3, threshold <= 800'
    """
    if gate.get("verdict") == "inconclusive":
        counts = "allowed" if gate["passed"] else "counts as failed"
        return (f"INCONCLUSIVE {gate['name']}: {gate.get('reason', '')} (threshold "
                f"{gate['threshold']}; {counts})")
    mark = "PASS" if gate["passed"] else "FAIL"
    return (f"{mark} {gate['name']}: measured {format_value(gate['measured'])}, "
            f"threshold {gate['threshold']}")


def first_failure(data: dict[str, Any]) -> FirstFailure | None:
    """The first failed gate of the first failed scenario, in run order (None: all green).

    A scenario that failed without a failed gate (an error, e.g. the stack did not come
    up) is reported by its error.

    Example:
        >>> str(first_failure(read_journal("reports/results.json")))       # doctest: +SKIP
        'always-red › chat_status: measured 200, threshold == 201'
    """
    for s in data.get("scenarios", []):
        if s.get("passed"):
            continue
        for g in s.get("gates", []):
            if not g.get("passed"):
                return FirstFailure(s["name"], g["name"], g.get("measured"), g.get("threshold"),
                                    s.get("error"))
        return FirstFailure(s["name"], error=s.get("error") or "failed")
    return None


def _versions(stack: dict[str, Any] | None) -> str:
    services = (stack or {}).get("services") or {}
    counts = Counter(info["version"] for name, info in services.items()
                     if isinstance(info, dict) and info.get("version") and name.startswith("agent"))
    return ", ".join(f"{v} ×{n}" for v, n in sorted(counts.items())) or "unknown"


def run_overview(data: dict[str, Any]) -> dict[str, Any]:
    """The header's facts: env, backend, agent versions, start, duration, passed counts.

    Example:
        >>> ov = run_overview(journal.to_json())                          # doctest: +SKIP
        >>> f"{ov['passed']} of {ov['total']} passed on {ov['versions']}"  # doctest: +SKIP
        '1 of 2 passed on v1 ×3'
    """
    scenarios = data.get("scenarios", [])
    started = data.get("started_unix")
    ends = [s["ended"] for s in scenarios if s.get("ended") is not None]
    ended = data.get("ended_unix") or (max(ends) if ends else None)
    duration = (ended - started) if started is not None and ended is not None else \
        sum(s.get("seconds", 0.0) for s in scenarios)
    passed = sum(1 for s in scenarios if s.get("passed"))
    when = (time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
            if started is not None else str(data.get("started", "")))
    return {"env": data.get("env", "?"), "backend": data.get("backend", "?"),
            "versions": _versions(data.get("stack")), "started": when,
            "duration_s": max(duration, 0.0), "passed": passed, "total": len(scenarios),
            "verdict": bool(data.get("passed")) and bool(scenarios)}


def summary_title(data: dict[str, Any]) -> str:
    """The summary's heading.

    Example:
        >>> summary_title({"env": "staging", "backend": "local"})
        'agentverify gates (staging, local backend)'
    """
    return f"agentverify gates ({data.get('env', '?')}, {data.get('backend', '?')} backend)"


def summary_lines(data: dict[str, Any], *, report_dir: str | Path | None = None,
                  files: tuple[str, ...] = REPORT_FILES) -> list[SummaryLine]:
    """The terminal summary of a run: headline, then each scenario with its gates, then
    where the ``files`` are (when ``report_dir`` is given).

    Example:
        >>> [l.text for l in summary_lines(journal.to_json())][:2]       # doctest: +SKIP
        ['2 of 2 scenarios passed', 'smoke: PASSED in 31.2s']
    """
    ov = run_overview(data)
    failure = first_failure(data)
    head = f"{ov['passed']} of {ov['total']} scenarios passed"
    if failure is not None:
        head += f"; first failing {'gate' if failure.gate else 'scenario'}: {failure}"
    lines = [SummaryLine(head, "fail" if failure else "pass", bold=True)]
    for s in data.get("scenarios", []):
        ok = bool(s.get("passed"))
        lines.append(SummaryLine(f"{s['name']}: {'PASSED' if ok else 'FAILED'} in "
                                 f"{s.get('seconds', 0.0):.1f}s", "pass" if ok else "fail",
                                 bold=True))
        for g in s.get("gates", []):
            status = "inconclusive" if g.get("verdict") == "inconclusive" else \
                "pass" if g["passed"] else "fail"
            lines.append(SummaryLine(f"  {gate_line(g)}", status))
        if s.get("error"):
            lines.append(SummaryLine(f"  error: {s['error'].splitlines()[0]}", "fail"))
    if data.get("panels_error"):
        lines.append(SummaryLine(f"dashboard panels not captured: {data['panels_error']}"))
    if report_dir is not None:
        lines.append(SummaryLine("reports: " + ", ".join(str(Path(report_dir) / f)
                                                         for f in files)))
    return lines
