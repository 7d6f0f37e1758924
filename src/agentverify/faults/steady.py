"""The steady-state hypothesis of a chaos rehearsal, checked continuously.

Chaos Toolkit checks a hypothesis before the method and after it; a rehearsal that ends
in a gate needs more: *when* the system left its steady state, for how long, and how
soon it was back. :class:`SteadyStateMonitor` evaluates the hypothesis every
``interval_s`` in a thread, over the probe's requests of the last ``window_s``:

* the error ratio and the p95 latency of the requests answered in the window;
* how many replicas answer their health check (each one, directly);
* one known-answer question per tick (round-robin): the answer cites its document.

Each evaluation is an :class:`Observation`; :meth:`SteadyStateMonitor.verdict` turns
them and the fault windows into the facts ``steady_before``, ``steady_after``,
``deviation_seconds``, ``detect_s`` (fault on -> first observed effect) and
``recover_s`` (fault off -> steady again, held for ``hold_s``).

Example:
    >>> monitor = SteadyStateMonitor(ctx, hypothesis).start()     # doctest: +SKIP
    >>> ...                                                       # faults happen
    >>> monitor.verdict(faults=[(t_on, t_off)], within_s=30).facts()
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentverify.scenarios.known_answers import check_known_answer
from agentverify.scenarios.smoke import unhealthy

if TYPE_CHECKING:
    from agentverify.scenarios.probe import Probe
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["Hypothesis", "Observation", "SteadyStateMonitor", "SteadyVerdict"]


@dataclass(frozen=True)
class Hypothesis:
    """What "steady" means for this rehearsal; ``None`` leaves a criterion out."""

    error_ratio: float | None = 0.01
    p95_ms: float | None = None
    healthy_replicas: int | None = None
    known_answers: bool = True
    window_s: float = 2.0
    interval_s: float = 0.5
    #: fewer answered requests than this in a window say nothing about ratio and p95
    min_requests: int = 3

    def describe(self) -> str:
        parts = []
        if self.error_ratio is not None:
            parts.append(f"error ratio <= {self.error_ratio:g}")
        if self.p95_ms is not None:
            parts.append(f"p95 <= {self.p95_ms:g} ms")
        if self.healthy_replicas:
            parts.append(f">= {self.healthy_replicas} healthy replicas")
        if self.known_answers:
            parts.append("known answers cite their documents")
        return ", ".join(parts) + f" (over {self.window_s:g} s windows)"


@dataclass(frozen=True)
class Observation:
    """One evaluation: when (monotonic), whether steady, and why not."""

    t: float
    steady: bool
    reasons: tuple[str, ...] = ()


@dataclass
class SteadyVerdict:
    """The facts of one steady-state check over a rehearsal."""

    steady_before: bool
    steady_after: bool
    deviation_seconds: float
    detect_s: float | None
    recover_s: float | None
    reasons: list[str] = field(default_factory=list)

    def facts(self) -> dict[str, Any]:
        return {"steady_before": self.steady_before, "steady_after": self.steady_after,
                "deviation_seconds": round(self.deviation_seconds, 2),
                "detect_s": None if self.detect_s is None else round(self.detect_s, 2),
                "recover_s": None if self.recover_s is None else round(self.recover_s, 2)}


class SteadyStateMonitor:
    """Evaluates a :class:`Hypothesis` in a thread until :meth:`stop`.

    Args:
        ctx: the scenario (its stack, config and running probe).
        hypothesis: what steady means.
        probe: the probe whose requests are judged.
    """

    def __init__(self, ctx: ScenarioContext, hypothesis: Hypothesis, probe: Probe) -> None:
        self.ctx = ctx
        self.hypothesis = hypothesis
        self.probe = probe
        self.observations: list[Observation] = []
        self.started_at = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next_question = 0

    def start(self) -> SteadyStateMonitor:
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="steady-state", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.hypothesis.interval_s):
            obs = self.evaluate()
            with self._lock:
                self.observations.append(obs)

    # ------------------------------------------------------------------ one evaluation

    def evaluate(self) -> Observation:
        h = self.hypothesis
        now = time.monotonic()
        reasons: list[str] = []
        since = now - self.probe.started_at - h.window_s
        recent = [s for s in self.probe.snapshot().samples if s.done >= since]
        if len(recent) >= h.min_requests:
            failed = sum(1 for s in recent if not s.ok)
            if h.error_ratio is not None and failed / len(recent) > h.error_ratio:
                reasons.append(f"error ratio {failed}/{len(recent)} > {h.error_ratio:g}")
            ok = sorted(s.latency_s for s in recent if s.ok)
            if h.p95_ms is not None and ok:
                p95 = ok[min(len(ok) - 1, int(0.95 * len(ok)))] * 1000
                if p95 > h.p95_ms:
                    reasons.append(f"p95 {p95:.0f} ms > {h.p95_ms:g} ms")
        elif h.error_ratio is not None:
            reasons.append(f"only {len(recent)} request(s) answered in {h.window_s:g} s")
        if h.healthy_replicas:
            replicas = self.ctx.stack.replicas
            bad = unhealthy(replicas, self.ctx.contract.health_path)
            healthy = len(replicas) - len(bad)
            if healthy < h.healthy_replicas:
                reasons.append(f"{healthy} healthy replica(s) < {h.healthy_replicas}: "
                               + "; ".join(bad)[:200])
        known = self.ctx.config.known_answers
        if h.known_answers and known:
            question = known[self._next_question % len(known)]
            self._next_question += 1
            problem = check_known_answer(self.ctx, question, timeout=h.window_s * 2)
            if problem:
                reasons.append(f"known answer wrong: {problem}")
        return Observation(now, not reasons, tuple(reasons))

    # ------------------------------------------------------------------ verdict

    def snapshot(self) -> list[Observation]:
        with self._lock:
            return list(self.observations)

    def steady_since(self, t: float) -> bool:
        """Whether every observation from ``t`` on (there is at least one) was steady."""
        obs = [o for o in self.snapshot() if o.t >= t]
        return bool(obs) and all(o.steady for o in obs)

    def wait_steady(self, *, hold_s: float, until: float) -> float | None:
        """Block until the hypothesis has held for ``hold_s``; the monotonic time that
        steady stretch began, or ``None`` if ``until`` passed first."""
        while True:
            obs = self.snapshot()
            start = None
            for o in obs:
                if not o.steady:
                    start = None
                elif start is None:
                    start = o.t
            if start is not None and obs[-1].t - start >= hold_s:
                return start
            if time.monotonic() >= until:
                return None
            time.sleep(self.hypothesis.interval_s / 2)

    def verdict(self, *, before_until: float, faults: list[tuple[float, float | None]],
                steady_from: float | None) -> SteadyVerdict:
        """Facts from the observations so far.

        Args:
            before_until: monotonic end of the "before" phase (the step that started
                monitoring waited until then).
            faults: ``(on, off)`` monotonic times of the faults injected meanwhile
                (``off`` None: still on).
            steady_from: when the final steady stretch began (:meth:`wait_steady`).
        """
        obs = self.snapshot()
        before = [o for o in obs if o.t <= before_until]
        steady_before = bool(before) and all(o.steady for o in before)
        dt = self.hypothesis.interval_s
        deviation = sum(dt for o in obs if o.t > before_until and not o.steady)
        first_on = min((on for on, _ in faults), default=None)
        detect = None
        if first_on is not None:
            hit = next((o.t for o in obs if o.t >= first_on and not o.steady), None)
            detect = None if hit is None else hit - first_on
        offs = [off for _, off in faults if off is not None]
        last_off = max(offs) if offs else None
        recover = None
        if steady_from is not None and last_off is not None:
            recover = max(0.0, steady_from - last_off)
        reasons = sorted({r.split(":")[0] for o in obs if not o.steady for r in o.reasons})
        return SteadyVerdict(steady_before, steady_from is not None, deviation, detect,
                             recover, reasons)
