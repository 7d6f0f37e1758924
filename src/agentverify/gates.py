"""Gates: thresholds over measured facts, each verdict carrying the figure.

A threshold is written the way an SRE says it: ``"<= 800"``, ``"< 0.01"``, ``"== 0"``,
``">= 20"``, ``"== true"``; a bare number or boolean means equality. Thresholds may
differ per environment::

    expect:
      failed_requests: "== 0"
      p95_ms: {default: "<= 800", production: "<= 500"}

A fact a step could not measure because the agent does not give what it needs (a
metric it does not export, a reply field it does not carry) is :class:`Inconclusive`,
with the reason. Its gate is *inconclusive*: shown as such with the reason, never as
passed, and it fails the scenario unless the gate says ``inconclusive: allow`` — a
production-readiness gate must not pass on a check nobody could make::

    expect:
      tokens_agree: {default: "== true", inconclusive: allow}   # shown, not failed

Example:
    >>> Gate.parse("p95_ms", "<= 800").evaluate({"p95_ms": 512.3})
    GateResult(name='p95_ms', threshold='<= 800', measured=512.3, passed=True)
    >>> Gate.parse("tokens_agree", "== true").evaluate(
    ...     {"tokens_agree": Inconclusive("the agent exports no token counter")}).line()
    'INCONCLUSIVE tokens_agree: the agent exports no token counter (threshold == true; counts as failed)'
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentverify.errors import ScenarioSchemaError

__all__ = ["Gate", "GateResult", "INCONCLUSIVE_POLICIES", "Inconclusive", "format_value",
           "parse_gates"]

#: what an inconclusive gate does to its scenario: ``fail`` (the default) or ``allow``
INCONCLUSIVE_POLICIES = ("fail", "allow")

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


class Inconclusive(str):
    """A fact that could not be measured, carrying why (a ``str``, so it travels through
    facts, JSON and reports as ``"inconclusive: <reason>"``).

    Example:
        >>> fact = Inconclusive("monitoring.metrics.tokens is null")
        >>> fact.reason, str(fact)
        ('monitoring.metrics.tokens is null', 'inconclusive: monitoring.metrics.tokens is null')
    """

    reason: str

    def __new__(cls, reason: str) -> Inconclusive:
        obj = super().__new__(cls, f"inconclusive: {reason}")
        obj.reason = reason
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (Inconclusive, (self.reason,))


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
    """A verdict: the gate, its threshold, what was measured, pass/fail.

    ``inconclusive`` holds the reason when the fact could not be measured; such a gate
    has ``passed`` False unless its policy is ``allow`` — and its verdict is
    ``inconclusive`` either way, never ``pass``.
    """

    name: str
    threshold: str
    measured: Any
    passed: bool
    inconclusive: str | None = None

    @property
    def verdict(self) -> str:
        """``pass``, ``fail`` or ``inconclusive``."""
        if self.inconclusive is not None:
            return "inconclusive"
        return "pass" if self.passed else "fail"

    def __repr__(self) -> str:
        extra = f", inconclusive={self.inconclusive!r}" if self.inconclusive else ""
        return (f"GateResult(name={self.name!r}, threshold={self.threshold!r}, "
                f"measured={self.measured!r}, passed={self.passed}{extra})")

    def line(self) -> str:
        if self.inconclusive is not None:
            counts = "allowed" if self.passed else "counts as failed"
            return (f"INCONCLUSIVE {self.name}: {self.inconclusive} (threshold "
                    f"{self.threshold}; {counts})")
        mark = "PASS" if self.passed else "FAIL"
        return f"{mark} {self.name}: measured {format_value(self.measured)}, threshold {self.threshold}"

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "threshold": self.threshold,
               "measured": self.measured, "passed": self.passed, "verdict": self.verdict}
        if self.inconclusive is not None:
            out["reason"] = self.inconclusive
        return out


@dataclass(frozen=True)
class Gate:
    """One threshold on one fact."""

    name: str
    op: str
    value: float | bool | str
    #: ``fail``: an inconclusive fact fails the scenario; ``allow``: it is only shown
    on_inconclusive: str = "fail"

    @property
    def threshold(self) -> str:
        return f"{self.op} {format_value(self.value) if not isinstance(self.value, str) else self.value}"

    @classmethod
    def parse(cls, name: str, spec: Any, *, where: str = "expect",
              on_inconclusive: str = "fail") -> Gate:
        if isinstance(spec, bool):
            return cls(name, "==", spec, on_inconclusive)
        if isinstance(spec, (int, float)):
            return cls(name, "==", float(spec), on_inconclusive)
        if isinstance(spec, str):
            m = _EXPR.match(spec)
            if m:
                return cls(name, m.group(1), _literal(m.group(2)), on_inconclusive)
            lit = _literal(spec.strip())
            if not isinstance(lit, str):
                return cls(name, "==", lit, on_inconclusive)
        raise ScenarioSchemaError(
            f"{where}.{name}: expected a threshold such as '<= 800', '== 0' or '>= 20', "
            f"got {spec!r}")

    def evaluate(self, facts: Mapping[str, Any]) -> GateResult:
        measured = facts.get(self.name)
        if isinstance(measured, Inconclusive):
            return GateResult(self.name, self.threshold, str(measured),
                              self.on_inconclusive == "allow", inconclusive=measured.reason)
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
    an environment without an entry (and no default) is not gated on that fact. The
    mapping's ``inconclusive`` key (``fail`` or ``allow``) says what an inconclusive
    fact does (see the module docstring).
    """
    if expect is None:
        return []
    if not isinstance(expect, Mapping):
        raise ScenarioSchemaError(f"{where}: expected a mapping of fact -> threshold, "
                                  f"got {type(expect).__name__}")
    gates = []
    for name, spec in expect.items():
        if isinstance(spec, Mapping):
            policy = spec.get("inconclusive", "fail")
            if policy not in INCONCLUSIVE_POLICIES:
                raise ScenarioSchemaError(
                    f"{where}.{name}.inconclusive: expected fail or allow, got {policy!r}")
            chosen = spec.get(env, spec.get("default"))
            if chosen is None:
                continue
            gates.append(Gate.parse(str(name), chosen, where=f"{where}.{name}",
                                    on_inconclusive=policy))
        else:
            gates.append(Gate.parse(str(name), spec, where=where))
    return gates
