"""Watching a drill's alert where an operator would see it, and the known-answer prober.

:class:`AlertWatch` polls, in a thread, Prometheus' alerts (when the alert went pending,
firing, and inactive again) and the stack's receiver (every Alertmanager notification of
the alert, firing and resolved, with the time it arrived), so a drill reads each moment
off a timeline instead of blocking on one wait at a time.

:class:`KnownAnswerProber` is the data-corruption drill's detector, a synthetic check
the way a blackbox prober is: it asks every known-answer question in a loop and reports
how many came back wrong to the receiver, whose ``/metrics`` Prometheus scrapes; the
alert rule ``AgentKnownAnswersWrong`` fires on it like on any agent metric.

Example:
    >>> watch = AlertWatch(ctx.prometheus, receiver, "AgentHighLoad").start()  # doctest: +SKIP
    >>> watch.wait(lambda w: w.notified("firing"), timeout=30)                 # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentverify._poller import Poller
from agentverify.errors import StackError
from agentverify.monitoring.render import KNOWN_ANSWERS_CHECK
from agentverify.scenarios.known_answers import check_known_answer

if TYPE_CHECKING:
    from agentverify.drills.receiver import Notification, ReceiverClient
    from agentverify.monitoring.prometheus import PrometheusClient
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["AlertWatch", "KnownAnswerProber", "ProbeRound"]


class AlertWatch(Poller):
    """When one alert was pending / firing / inactive at Prometheus, and notified.

    Times are unix seconds (the receiver's receive time is on the same clock).

    Args:
        prometheus: the stack's Prometheus.
        receiver: the stack's receiver.
        alert: the alert name.
        since: receiver sequence number to read from (notifications before are ignored).
        interval: seconds between polls.
    """

    def __init__(self, prometheus: PrometheusClient, receiver: ReceiverClient, alert: str, *,
                 since: int = 0, interval: float = 0.2) -> None:
        super().__init__()
        self.prometheus = prometheus
        self.receiver = receiver
        self.alert = alert
        self.interval = interval
        self.name = f"watch-{alert}"
        self._since = since
        self._lock = threading.Lock()
        self.state = "inactive"
        self.pending_at: float | None = None
        self.firing_at: float | None = None
        self.inactive_at: float | None = None  # after firing: the condition is gone
        self.notifications: list[Notification] = []
        self.errors: list[str] = []

    def tick(self) -> None:
        """One look at Prometheus and at the receiver."""
        now = time.time()
        try:
            states = [a.state for a in self.prometheus.alerts() if a.name == self.alert]
        except StackError as exc:
            states = None
            self.errors.append(str(exc))
        try:
            seen = self.receiver.notifications(self._since)
            new = [n for n in seen if n.name == self.alert]
            last = max((n.seq for n in seen), default=self._since)
        except StackError as exc:
            new, last = [], self._since
            self.errors.append(str(exc))
        with self._lock:
            if states is not None:
                state = "firing" if "firing" in states else "pending" if states else "inactive"
                if state != "inactive" and self.pending_at is None:
                    self.pending_at = now
                if state == "firing" and self.firing_at is None:
                    self.firing_at = now
                if state != "inactive":
                    self.inactive_at = None  # (again) active: not over yet
                elif self.firing_at is not None and self.inactive_at is None:
                    self.inactive_at = now
                self.state = state
            self.notifications += new
            self._since = last

    def notified(self, status: str, after: float = 0.0) -> Notification | None:
        """The first notification with ``status`` (firing / resolved) received after
        ``after`` (unix seconds)."""
        with self._lock:
            return next((n for n in self.notifications
                         if n.status == status and n.received >= after), None)

    def wait(self, done: Callable[[AlertWatch], Any], timeout: float) -> Any:
        """Block until ``done(self)`` is truthy (returned) or ``timeout`` passes (None)."""
        deadline = time.monotonic() + timeout
        while True:
            value = done(self)
            if value or time.monotonic() >= deadline:
                return value or None
            time.sleep(min(0.1, self.interval / 2))


@dataclass(frozen=True)
class ProbeRound:
    """One round of known-answer questions: when it finished, how many were wrong."""

    t: float
    failed: int
    total: int
    problems: tuple[str, ...] = ()


class KnownAnswerProber(Poller):
    """Asks every known-answer question every ``interval_s`` and reports the result.

    Args:
        ctx: the scenario (its stack's load balancer and the config's known answers).
        receiver: where the result goes (``PUT /checks/known_answers``).
        interval_s: seconds between rounds.
    """

    name = "known-answers"

    def __init__(self, ctx: ScenarioContext, receiver: ReceiverClient, *,
                 interval_s: float = 0.5) -> None:
        super().__init__()
        self.ctx = ctx
        self.receiver = receiver
        self.interval = interval_s
        self.rounds: list[ProbeRound] = []

    def stop(self) -> None:
        """Stop asking, and take the check away (no stale gauge keeps an alert firing)."""
        super().stop()
        try:
            self.receiver.clear_check(KNOWN_ANSWERS_CHECK)
        except StackError:
            pass  # the receiver is gone with the stack: so is the check

    def tick(self) -> None:
        known = list(self.ctx.config.known_answers)
        problems = [p for k in known
                    if (p := check_known_answer(self.ctx, k, timeout=5.0)) is not None]
        self.rounds.append(ProbeRound(time.time(), len(problems), len(known), tuple(problems)))
        try:
            self.receiver.set_check(KNOWN_ANSWERS_CHECK, len(problems), len(known))
        except StackError:
            pass  # reported on the next round; the drill's timeouts tell the story

    def first_wrong(self, after: float = 0.0) -> ProbeRound | None:
        return next((r for r in list(self.rounds) if r.t >= after and r.failed), None)

    def last(self) -> ProbeRound | None:
        return self.rounds[-1] if self.rounds else None
