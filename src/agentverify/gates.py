"""Gates: thresholds over measured facts, each verdict carrying the figure.

A threshold is written the way an SRE says it: ``"<= 800"``, ``"< 0.01"``, ``"== 0"``,
``">= 20"``, ``"== true"``; a bare number or boolean means equality. Thresholds may
differ per environment::

    expect:
      failed_requests: "== 0"
      p95_ms: {default: "<= 800", production: "<= 500"}

Example:
    >>> Gate.parse("p95_ms", "<= 800").evaluate({"p95_ms": 512.3})
    GateResult(name='p95_ms', threshold='<= 800', measured=512.3, passed=True)
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentverify.errors import ScenarioSchemaError

__all__ = ["Gate", "GateResult", "parse_gates", "format_value"]

_OPS = {
    "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
    "==": operator.eq, "!=": operator.ne,
}
_EXPR = re.compile(r"^\s*(<=|>=|==|!=|<|>)\s*([^<>=!\s].*?)\s*$")


def _literal(text: str) -> float | bool | str:
    low = text.lower()
    if low in {"true", "false"}:
        return low == "true"
    try:
        return float(text)
    except ValueError:
        return text


def format_value(value: Any) -> str:
    """Figures as people read them: 512.3, 0.0042, 12,000, true."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.4g}"
    if value is None:
        return "not measured"
    return str(value)


@dataclass(frozen=True)
class GateResult:
    """A verdict: the gate, its threshold, what was measured, pass/fail."""

    name: str
    threshold: str
    measured: Any
    passed: bool

    def __repr__(self) -> str:
        return (f"GateResult(name={self.name!r}, threshold={self.threshold!r}, "
                f"measured={self.measured!r}, passed={self.passed})")

    def line(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        return f"{mark} {self.name}: measured {format_value(self.measured)}, threshold {self.threshold}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold,
                "measured": self.measured, "passed": self.passed}


@dataclass(frozen=True)
class Gate:
    """One threshold on one fact."""

    name: str
    op: str
    value: float | bool | str

    @property
    def threshold(self) -> str:
        return f"{self.op} {format_value(self.value) if not isinstance(self.value, str) else self.value}"

    @classmethod
    def parse(cls, name: str, spec: Any, *, where: str = "expect") -> Gate:
        if isinstance(spec, bool):
            return cls(name, "==", spec)
        if isinstance(spec, (int, float)):
            return cls(name, "==", float(spec))
        if isinstance(spec, str):
            m = _EXPR.match(spec)
            if m:
                return cls(name, m.group(1), _literal(m.group(2)))
            lit = _literal(spec.strip())
            if not isinstance(lit, str):
                return cls(name, "==", lit)
        raise ScenarioSchemaError(
            f"{where}.{name}: expected a threshold such as '<= 800', '== 0' or '>= 20', "
            f"got {spec!r}")

    def evaluate(self, facts: Mapping[str, Any]) -> GateResult:
        measured = facts.get(self.name)
        if measured is None:
            return GateResult(self.name, self.threshold, None, False)
        try:
            left: Any = measured
            right: Any = self.value
            if isinstance(right, bool) or isinstance(left, bool):
                left, right = bool(left), bool(right)
            elif isinstance(right, float):
                left = float(left)
            passed = bool(_OPS[self.op](left, right))
        except (TypeError, ValueError):
            passed = False
        return GateResult(self.name, self.threshold, measured, passed)


def parse_gates(expect: Any, env: str, *, where: str = "expect") -> list[Gate]:
    """Gates of one environment from an ``expect:`` mapping.

    A per-environment threshold is a mapping with ``default`` and environment names;
    an environment without an entry (and no default) is not gated on that fact.
    """
    if expect is None:
        return []
    if not isinstance(expect, Mapping):
        raise ScenarioSchemaError(f"{where}: expected a mapping of fact -> threshold, "
                                  f"got {type(expect).__name__}")
    gates = []
    for name, spec in expect.items():
        if isinstance(spec, Mapping):
            chosen = spec.get(env, spec.get("default"))
            if chosen is None:
                continue
            gates.append(Gate.parse(str(name), chosen, where=f"{where}.{name}"))
        else:
            gates.append(Gate.parse(str(name), spec, where=where))
    return gates
