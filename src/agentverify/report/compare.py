"""This run beside another: every gate's figure, the change, and whether it got worse.

A regression shows before it breaks a threshold: p95 up 40% while still under its
gate is a ``worse`` row. Which way is worse comes from the gate's operator (``<=`` /
``<``: lower is better; ``>=`` / ``>``: higher is better); for ``==`` / ``!=`` only a
verdict that changed counts. Key figures that are not gated (``p95_ms``,
``cost_per_request_usd``, ...) are compared too, with their known direction.

Example:
    >>> rows = compare_runs(this_json, last_week_json)                    # doctest: +SKIP
    >>> [(r.scenario, r.name, r.trend) for r in rows if r.trend == "worse"]  # doctest: +SKIP
    [('load-slo', 'p95_ms', 'worse')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentverify.errors import ScenarioSchemaError
from agentverify.gates import Gate, format_value
from agentverify.report.summary import SummaryLine

__all__ = ["GateDelta", "compare_runs", "compare_lines", "worse_first", "KEY_FACTS"]

#: figures compared even when no gate names them: fact -> True when lower is better
KEY_FACTS = {"p50_ms": True, "p95_ms": True, "p99_ms": True, "probe_p95_ms": True,
             "error_ratio": True, "failed_requests": True, "longest_gap_s": True,
             "cost_usd": True, "cost_per_request_usd": True, "cost_per_1k_requests_usd": True,
             "rps": False}
#: a relative change below this is "same" (measurement noise of a short run)
SAME_WITHIN = 0.02


@dataclass(frozen=True)
class GateDelta:
    """One figure in both runs.

    Attributes:
        trend: ``worse``, ``better``, ``same``, ``changed`` (different, no direction),
            ``new`` (not in the other run) or ``gone`` (only in the other run).
        threshold: The gate's threshold in this run ("" for an ungated key figure).

    Example:
        >>> row = compare_runs(this_json, other_json)[0]                  # doctest: +SKIP
        >>> row.name, row.measured, row.other, row.change_text, row.trend  # doctest: +SKIP
        ('p95_ms', 560.0, 400.0, '+160 (+40.0%)', 'worse')
    """

    scenario: str
    name: str
    threshold: str
    measured: Any
    other: Any
    passed: bool | None
    other_passed: bool | None
    change: float | None
    change_ratio: float | None
    trend: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def change_text(self) -> str:
        """``+82 (+19.1%)``; empty when nothing changed or the figures are not numbers."""
        if not self.change:
            return ""
        sign = "+" if self.change > 0 else ""
        pct = f" ({sign}{self.change_ratio:.1%})" if self.change_ratio is not None else ""
        return f"{sign}{format_value(self.change)}{pct}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _lower_is_better(threshold: str, name: str) -> bool | None:
    if threshold:
        try:
            op = Gate.parse(name, threshold).op
        except ScenarioSchemaError:
            return None
        return {"<=": True, "<": True, ">=": False, ">": False}.get(op)
    return KEY_FACTS.get(name)


def _delta(scenario: str, name: str, threshold: str, measured: Any, other: Any,
           passed: bool | None, other_passed: bool | None) -> GateDelta:
    a, b = _number(measured), _number(other)
    change = ratio = None
    if a is not None and b is not None:
        change = a - b
        ratio = change / abs(b) if b else None
    lower = _lower_is_better(threshold, name)
    if passed is not None and other_passed is not None and passed != other_passed:
        trend = "better" if passed else "worse"
    elif change is None:
        trend = "same" if measured == other else "changed"
    elif change == 0 or (ratio is not None and abs(ratio) < SAME_WITHIN):
        trend = "same"
    elif lower is None:
        trend = "changed"
    else:
        trend = "worse" if (change > 0) == lower else "better"
    return GateDelta(scenario, name, threshold, measured, other, passed, other_passed,
                     change, ratio, trend)


def compare_runs(this: dict[str, Any], other: dict[str, Any]) -> list[GateDelta]:
    """Every gate (and key figure) of ``this`` run beside the ``other`` run's.

    Scenarios and gates are matched by name; rows are in this run's order, then what
    only the other run had (``gone``).

    Example:
        >>> [r.trend for r in compare_runs(this_json, this_json)]         # doctest: +SKIP
        ['same', 'same', 'same']
    """
    theirs = {s["name"]: s for s in other.get("scenarios", [])}
    rows: list[GateDelta] = []
    seen: set[tuple[str, str]] = set()
    for s in this.get("scenarios", []):
        o = theirs.get(s["name"], {})
        o_gates = {g["name"]: g for g in o.get("gates", [])}
        o_facts = o.get("facts", {})
        for g in s.get("gates", []):
            og = o_gates.get(g["name"])
            seen.add((s["name"], g["name"]))
            if og is None:
                rows.append(GateDelta(s["name"], g["name"], g["threshold"], g["measured"], None,
                                      g["passed"], None, None, None, "new"))
                continue
            rows.append(_delta(s["name"], g["name"], g["threshold"], g["measured"],
                               og["measured"], g["passed"], og["passed"]))
        for name in KEY_FACTS:
            facts = s.get("facts", {})
            if (s["name"], name) in seen or name not in facts or name not in o_facts:
                continue
            if _number(facts[name]) is None or _number(o_facts[name]) is None:
                continue
            seen.add((s["name"], name))
            rows.append(_delta(s["name"], name, "", facts[name], o_facts[name], None, None))
    for o in other.get("scenarios", []):
        for g in o.get("gates", []):
            if (o["name"], g["name"]) not in seen:
                rows.append(GateDelta(o["name"], g["name"], g["threshold"], None, g["measured"],
                                      None, g["passed"], None, None, "gone"))
    return rows


def worse_first(rows: list[GateDelta]) -> list[GateDelta]:
    """Regressions first (what a reader looks for), otherwise in run order.

    Example:
        >>> [r.trend for r in worse_first(rows)]                          # doctest: +SKIP
        ['worse', 'same', 'better']
    """
    return sorted(rows, key=lambda r: r.trend != "worse")


def compare_lines(rows: list[GateDelta], other_label: str) -> list[SummaryLine]:
    """The comparison for a terminal: one line per figure, regressions first and marked.

    Example:
        >>> [l.text for l in compare_lines(rows, "last.json")][1]        # doctest: +SKIP
        '  WORSE   load-slo › p95_ms: 512 vs 430: +82 (+19.1%), threshold <= 800'
    """
    worse = sum(1 for r in rows if r.trend == "worse")
    lines = [SummaryLine(f"compared with {other_label}: {len(rows)} figure(s), {worse} worse",
                         "fail" if worse else "pass", bold=True)]
    for r in worse_first(rows):
        status = {"worse": "fail", "better": "pass"}.get(r.trend, "info")
        change = f": {r.change_text}" if r.change_text else ""
        gate = f", threshold {r.threshold}" if r.threshold else " (not gated)"
        lines.append(SummaryLine(
            f"  {r.trend.upper():<7} {r.scenario} › {r.name}: {format_value(r.measured)} vs "
            f"{format_value(r.other)}{change}{gate}", status))
    return lines
