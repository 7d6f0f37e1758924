"""The run journal: typed results that every report writer reads.

One :class:`RunJournal` per run collects a :class:`ScenarioResult` per rehearsal (facts,
gates, step timings, error). The JSON, HTML and terminal writers all read the journal,
never the tests, so they cannot disagree.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentverify.gates import GateResult

__all__ = ["RunJournal", "ScenarioResult", "StepResult"]


@dataclass
class StepResult:
    """One step of a scenario: its type, seconds taken, facts it measured, error."""

    index: int
    type: str
    seconds: float
    facts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "type": self.type, "seconds": round(self.seconds, 3),
                "facts": self.facts, "error": self.error}


@dataclass
class ScenarioResult:
    """The measured facts and gate verdicts of one scenario."""

    name: str
    file: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    series: dict[str, list[list[float]]] = field(default_factory=dict)

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
                "facts": self.facts, "gates": [g.to_json() for g in self.gates],
                "steps": [s.to_json() for s in self.steps]}


@dataclass
class RunJournal:
    """Everything one run measured."""

    env: str
    backend: str
    started: float = field(default_factory=time.time)
    scenarios: list[ScenarioResult] = field(default_factory=list)
    stack: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, result: ScenarioResult) -> None:
        with self._lock:
            self.scenarios.append(result)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.scenarios)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            scenarios = [s.to_json() for s in self.scenarios]
        return {"env": self.env, "backend": self.backend,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                "passed": all(s["passed"] for s in scenarios),
                "stack": self.stack, "scenarios": scenarios}

    def write_json(self, path: Path, redact=lambda data: data) -> Path:
        """Write atomically (a crash never leaves half a file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(redact(self.to_json()), indent=2, default=str) + "\n")
        os.replace(tmp, path)
        return path
