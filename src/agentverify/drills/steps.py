"""Drill steps: the emergency runbooks rehearsed end to end, with the clock running.

=====================  ==================================================================
``drill``              induce an emergency, wait for its alert at Prometheus and at the
                       receiver, run the runbook (on the alert's arrival, or by the step),
                       wait for the steady state, remove the cause, see everything
                       resolve, recover; every moment measured
``runbook``            run a runbook of the config now (a manual, unalerted run)
``corrupt``            damage the live data (noise over vectors, deleted entities,
                       poisoned cache entries), backed up first, repaired after
``alert_rules_test``   ``promtool test rules`` on this environment's rendered rules
=====================  ==================================================================

The drill's clock (unix seconds; the receiver and Prometheus share this machine's clock):

    cause ──> firing at Prometheus ──> webhook at the receiver ──> runbook start
      │   time_to_alert_s          time_to_notify_s (from the cause)        │
      │                                                   time_to_mitigate_s │
      │                                         runbook end ──> steady again ┘
    cause removed ──> resolved notification: time_to_resolve_s (0 when the runbook's
                      mitigation had resolved it already: resolved_by_runbook)

An emergency is induced with the fault steps' own functions (``fault``, ``llm_fault``),
a background Locust load, or :func:`~agentverify.drills.corrupt.corrupt_stack`, so
their removal is deferred and verified as for any fault; whatever a runbook changes is
put back after the scenario (see :mod:`agentverify.drills.runbook`).
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentverify import _http, agent_ops
from agentverify.backup import compare_with, open_backup
from agentverify.config import RunbookOperation, the_one_key
from agentverify.cost import LedgerDelta, PriceTable
from agentverify.drills.corrupt import Corruption, corrupt_stack
from agentverify.drills.receiver import Notification
from agentverify.drills.runbook import RunbookRun, receiver_of
from agentverify.drills.watch import AlertWatch, KnownAnswerProber
from agentverify.errors import AgentVerifyError, ScenarioError, StackError
from agentverify.faults.steady import Hypothesis, SteadyStateMonitor
from agentverify.faults.steps import (
    FaultClearParams,
    FaultParams,
    LLMFaultParams,
    fault,
    fault_clear,
    llm_fault,
)
from agentverify.load.driver import BackgroundLoad
from agentverify.load.steps import LoadStartParams, prepare_background_load, start_background_load
from agentverify.monitoring.render import AlertRule, alert_rules, alert_timing, run_rule_tests
from agentverify.scenarios.cost_controls import burst_from_one_client
from agentverify.scenarios.known_answers import check_known_answers
from agentverify.scenarios.probe import Probe, ProbeReport
from agentverify.scenarios.registry import StepParams, step
from agentverify.scenarios.smoke import unhealthy

if TYPE_CHECKING:
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["DEFAULT_ALERTS", "DRILL_FACTS", "DrillParams", "Trigger"]


# ------------------------------------------------------------------------------ params


class CorruptParams(StepParams):
    """What :func:`~agentverify.drills.corrupt.corrupt_stack` damages (shares of all)."""

    noise: float = Field(0.5, ge=0, le=1, description="entities whose vectors become noise")
    delete: float = Field(0.25, ge=0, le=1, description="entities deleted")
    poison_cache: float = Field(1.0, ge=0, le=1, description="cached answers poisoned")
    collection: str | None = Field(None, description="default: vector_store.collection")
    seed: int = 7

    @model_validator(mode="after")
    def _something(self) -> CorruptParams:
        if self.noise + self.delete > 1:
            raise ValueError("noise + delete is more than every entity")
        if not (self.noise or self.delete or self.poison_cache):
            raise ValueError("nothing to corrupt: set noise, delete or poison_cache")
        return self


class Trigger(BaseModel):
    """The emergency a drill induces: exactly one of the keys.

    ``fault`` and ``llm_fault`` take the fault steps' parameters (held until the drill
    removes them); ``llm_fault.models`` may say ``primary`` / ``backup`` for the
    configured model names; ``load`` a background Locust load; ``corrupt`` a corruption.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fault: FaultParams | None = None
    llm_fault: LLMFaultParams | None = None
    load: LoadStartParams | None = None
    corrupt: CorruptParams | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Trigger:
        kind = the_one_key(self, "a trigger has exactly one of fault, llm_fault, load, corrupt")
        if kind in ("fault", "llm_fault") and getattr(self, kind).duration_s is not None:
            raise ValueError(f"{kind}.duration_s: the drill removes the cause itself "
                             "(after the runbook)")
        return self

    @property
    def kind(self) -> str:
        return the_one_key(self, "")

    @property
    def params(self) -> Any:
        return getattr(self, self.kind)


#: the alert a drill waits for, by the kind of its trigger (``alert:`` overrides)
DEFAULT_ALERTS = {"load": "AgentHighLoad", "llm_fault": "AgentHighErrorRate",
                  "fault": "AgentHighErrorRate", "corrupt": "AgentKnownAnswersWrong"}


class SteadyParams(BaseModel):
    """The drill's steady-state hypothesis (see :mod:`agentverify.faults.steady`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_ratio: float | None = Field(0.01, ge=0, le=1)
    p95_ms: float | None = Field(None, gt=0, description="default: the environment's slo.p95_ms")
    known_answers: bool | None = Field(None, description="default: on for a corruption")
    window_s: float = Field(2.0, gt=0, le=60)
    hold_s: float = Field(2.0, gt=0, le=600)


class DrillParams(StepParams):
    runbook: str = Field(..., pattern=r"^[a-z][a-z0-9_]*$")
    trigger: Trigger
    alert: str | None = Field(None, description="default: by the trigger (DEFAULT_ALERTS)")
    auto: bool = Field(True, description="true: the runbook starts when the alert reaches "
                                         "the receiver; false: when it fires, after ack_s")
    ack_s: float = Field(0.0, ge=0, le=3600, description="manual: the on-call's reaction")
    recover: list[RunbookOperation] = Field(
        default_factory=list, description="after the cause is removed: back to normal")
    steady: SteadyParams = Field(default_factory=SteadyParams)
    probe_rps: float = Field(5.0, gt=0, le=200)
    probe_unique: bool | None = Field(None, description="every probe request a question of "
                                                         "its own (default: for LLM faults)")
    before_s: float = Field(2.0, ge=0, le=600)
    alert_timeout_s: float | None = Field(None, gt=0, description="default: from the "
                                                                   "rendered timings")
    mitigate_within_s: float = Field(60.0, gt=0, le=3600)
    resolve_timeout_s: float | None = Field(None, gt=0)


DRILL_FACTS = (
    # every drill
    "drill_ok", "drill_problems", "drill_seconds", "steady_before",
    "time_to_alert_s", "time_to_notify_s", "notify_delay_s", "time_to_runbook_s",
    "time_to_mitigate_s", "time_to_resolve_s", "mitigated", "resolved", "resolved_by_runbook",
    "runbook_ok", "runbook_steps_ok", "runbook_steps", "team_notified", "alert_payload_ok",
    "failed_requests_during", "probe_requests_during", "recovered", "recover_s",
    # high load
    "replicas_after_runbook", "replicas_serving", "rate_limited_429",
    "rate_limited_burst_429", "admitted_p95_ms",
    "load_requests", "load_rps",
    # API error
    "backup_model_answers", "outage_answers_cached", "error_ratio_after",
    "cost_per_request_primary_usd", "cost_per_request_backup_usd",
    "primary_answers_after_recover",
    # data corruption
    "corruption_detected", "time_to_detect_s", "known_answers_wrong_during",
    "known_answers_wrong_after", "keys_lost", "keys_changed", "entities_lost",
    "entities_changed", "search_mismatches", "downtime_s",
)


# ------------------------------------------------------------------------------ the drill


@dataclass
class _Cause:
    """The induced emergency: what it was, and how to remove it."""

    label: str
    remove: Callable[[], Any]
    corruption: Corruption | None = None
    load: Any = None


def _induce(ctx: ScenarioContext, trigger: Trigger, tag: str,
            spike: BackgroundLoad | None) -> _Cause:
    kind, p = trigger.kind, trigger.params
    if kind == "fault":
        name = f"drill-{tag}"
        fault(ctx, p.model_copy(update={"wait": False, "name": name}))
        return _Cause(f"{p.target} {p.toxic}",
                      lambda: fault_clear(ctx, FaultClearParams(name=name)))
    if kind == "llm_fault":
        model = ctx.config.model
        names = {"primary": model.model_name, "backup": model.backup.model_name}
        models = None if p.models is None else [names.get(m, m) for m in p.models]
        llm_fault(ctx, p.model_copy(update={"wait": False, "models": models}))
        scope = f" on {', '.join(models)}" if models else ""
        return _Cause(f"LLM answers {p.status} at {p.rate:g}{scope}",
                      lambda: fault_clear(ctx, FaultClearParams(name="llm")))
    if kind == "load":
        assert spike is not None  # prepared before the steady state was measured
        load = start_background_load(ctx, spike)
        users = p.users or ctx.config.load.users
        return _Cause(f"load spike: {users} users", load.stop, load=load)
    found = corrupt_stack(ctx, noise=p.noise, delete=p.delete, poison_cache_ratio=p.poison_cache,
                          collection=p.collection, seed=p.seed)
    return _Cause("data corrupted", lambda: None, corruption=found)


def _measure(prometheus: Any, rule: AlertRule) -> str:
    try:
        samples = prometheus.query(rule.value)
    except StackError as exc:
        return f"could not be read ({exc})"
    if not samples:
        return "returned no data (is the metric exposed and scraped?)"
    return ", ".join(f"{s.value:.4g}" for s in samples[:3])


def _not_fired(ctx: ScenarioContext, watch: AlertWatch, rule: AlertRule, cause: _Cause,
               timeout: float, auto: bool, t_cause: float) -> str:
    if watch.firing_at is not None and auto:
        return (f"{rule.name} fired at Prometheus {watch.firing_at - t_cause:.1f}s after the "
                f"cause but no notification reached the receiver within {timeout:.0f}s: "
                "check Alertmanager's route and webhook (alertmanager.yml)")
    state = f"stayed {watch.state}" if watch.state != "inactive" else "never went pending"
    return (f"{rule.name} did not fire within {timeout:.0f}s of the cause ({cause.label}): "
            f"{rule.value} measured {_measure(ctx.prometheus, rule)} against the threshold "
            f"{rule.op} {rule.threshold:g} ({state}); the rule cannot fire on this emergency: "
            "check monitoring.alerts and the rule (alert_rules.yml)")


def _wait_inactive(ctx: ScenarioContext, alert: str, timeout: float) -> None:
    """The drill starts from calm: its alert is not pending or firing (a previous
    scenario's may still be on for a window's length)."""
    deadline = time.monotonic() + timeout
    states: list[str] = []
    while time.monotonic() < deadline:
        states = [a.state for a in ctx.prometheus.alerts() if a.name == alert]
        if not states:
            return
        time.sleep(0.5)
    raise ScenarioError(f"{alert} is still {states[0]} {timeout:.0f}s before the drill could "
                        "start: something else keeps it on (see the timeline)")


def _wait_steady_after(monitor: SteadyStateMonitor, after: float, hold_s: float,
                       until: float) -> float | None:
    """Start (monotonic) of the first stretch of steady observations made after ``after``
    that lasts ``hold_s``; None if ``until`` comes first."""
    while True:
        start = None
        obs = [o for o in monitor.snapshot() if o.t >= after]
        for o in obs:
            if not o.steady:
                start = None
            elif start is None:
                start = o.t
            if start is not None and o.t - start >= hold_s:
                return start
        if time.monotonic() >= until:
            return None
        time.sleep(monitor.hypothesis.interval_s / 2)


def _reasons_since(monitor: SteadyStateMonitor, after: float) -> list[str]:
    """The kinds of reason the hypothesis failed after ``after``, the first of each kind
    (``error ratio 6/6 > 0.01`` stands for every error-ratio breach)."""
    seen: dict[str, str] = {}
    for o in monitor.snapshot():
        if o.t >= after:
            for r in o.reasons:
                head = r.split(":")[0]
                seen.setdefault(re.sub(r"[0-9][0-9./]*", "N", head), head)
    return list(seen.values())


def _samples(report: ProbeReport, t0_mono: float, start: float, end: float | None) -> list[Any]:
    """Probe samples sent between two monotonic times."""
    lo, hi = start - t0_mono, (end - t0_mono) if end is not None else float("inf")
    return [s for s in report.samples if lo <= s.t < hi]


def _p95(samples: list[Any]) -> float | None:
    lat = sorted(s.latency_s for s in samples if s.ok)
    if not lat:
        return None
    return round(lat[min(len(lat) - 1, int(0.95 * len(lat)))] * 1000.0, 1)


def _cost_per_request(prices: PriceTable, before: dict[str, Any], after: dict[str, Any],
                      model: str) -> tuple[float | None, int]:
    delta = LedgerDelta.between(before, after)
    usage = delta.models.get(model)
    if usage is None or not usage.chat_requests:
        return None, 0
    return round(prices.cost(delta).per_model.get(model, 0.0) / usage.chat_requests, 8), \
        usage.chat_requests


@step("drill", params=DrillParams, facts=DRILL_FACTS)
def drill(ctx: ScenarioContext, params: DrillParams) -> dict[str, Any]:
    """Induce an emergency, alert, notify, run the runbook, recover; every moment timed."""
    facts: dict[str, Any] = dict.fromkeys(DRILL_FACTS)
    problems: list[str] = []
    suffix = f"_{params.label}" if params.label else ""
    try:
        return _drill(ctx, params, facts, problems)
    except AgentVerifyError:
        # the runner keeps facts only of steps that return: keep what was measured
        facts["drill_ok"] = False
        facts["drill_problems"] = "; ".join(problems) or None
        ctx.facts.update({k + suffix: v for k, v in facts.items()})
        raise


def _drill(ctx: ScenarioContext, p: DrillParams, facts: dict[str, Any],
           problems: list[str]) -> dict[str, Any]:
    config = ctx.config
    kind = p.trigger.kind
    alert = p.alert or DEFAULT_ALERTS[kind]
    rules = {r.name: r for r in alert_rules(config)}
    if alert not in rules:
        raise ScenarioError(f"drill: no alert rule {alert!r}; rules: {', '.join(rules)}")
    rule = rules[alert]
    runbook = RunbookRun(ctx, p.runbook, alert=alert)  # an unknown runbook fails here
    timing = alert_timing(config)
    alert_timeout = p.alert_timeout_s or timing.alert_timeout_s
    resolve_timeout = p.resolve_timeout_s or timing.resolve_timeout_s
    receiver = receiver_of(ctx)
    prices = PriceTable.from_config(config.cost)
    primary, backup = config.model.model_name, config.model.backup.model_name
    ctx.say(f"  drill {p.runbook}: {kind} -> {alert} ({rule.expr}, for {rule.for_}); "
            f"{timing.describe()}")

    with ctx.waiting("alert calm before the drill"):
        _wait_inactive(ctx, alert, timing.resolve_timeout_s)
    since = receiver.last_seq()
    drill_t0 = time.time()
    unique = p.probe_unique if p.probe_unique is not None else kind in ("llm_fault", "fault")
    probe = Probe(ctx.stack.lb_url, rps=p.probe_rps, unique=unique, contract=ctx.contract,
                  client_id=f"av-drill-probe-{uuid.uuid4().hex[:8]}").start()
    ctx.defer("stop the drill's probe", probe.stop)
    known = p.steady.known_answers if p.steady.known_answers is not None else kind == "corrupt"
    hypothesis = Hypothesis(error_ratio=p.steady.error_ratio,
                            p95_ms=p.steady.p95_ms if p.steady.p95_ms is not None
                            else config.slo.p95_ms,
                            healthy_replicas=config.stack.replicas, known_answers=known,
                            window_s=p.steady.window_s, interval_s=0.5)
    monitor = SteadyStateMonitor(ctx, hypothesis, probe).start()
    ctx.defer("stop the drill's steady-state monitor", monitor.stop)
    prober = None
    if alert == "AgentKnownAnswersWrong":
        prober = KnownAnswerProber(ctx, receiver).start()
        ctx.defer("stop the known-answer prober", prober.stop)
    ledger0 = ctx.ledger() if kind == "llm_fault" else None
    # a spike's Locust child loads meanwhile: its users start at the cause, not a second after
    spike = prepare_background_load(ctx, p.trigger.params, "spike") if kind == "load" else None
    # the first window has too few answers to judge; the hypothesis is held before_s after it
    ctx.wait(p.steady.window_s + p.before_s, "steady state before")
    facts["steady_before"] = monitor.steady_since(probe.started_at + p.steady.window_s)
    if not facts["steady_before"]:
        problems.append(f"not steady before the emergency: {_reasons_since(monitor, 0.0)}")

    # ------------------------------------------------------------------ the emergency
    watch = AlertWatch(ctx.prometheus, receiver, alert, since=since)
    ledger1 = ctx.ledger() if ledger0 is not None else None
    t_cause, m_cause = time.time(), time.monotonic()
    watch.start()
    ctx.defer("stop the alert watch", watch.stop)
    cause = _induce(ctx, p.trigger, uuid.uuid4().hex[:6], spike)
    ctx.say(f"  emergency: {cause.label}; waiting for {alert}"
            + (" at the receiver (automatic remediation)" if p.auto else " (manual runbook)"))

    # the alert path's own delays (rate window, for, scrape and evaluation, group_wait)
    with ctx.waiting("alert"):
        if p.auto:
            got = watch.wait(lambda w: w.notified("firing", after=t_cause),
                             alert_timeout + timing.notify_after_firing_s)
        else:
            got = watch.wait(lambda w: w.firing_at, alert_timeout)
    if watch.firing_at is not None:
        facts["time_to_alert_s"] = round(watch.firing_at - t_cause, 2)
        ctx.event("alert", f"{alert} firing", t=watch.firing_at, source="prometheus")
    if prober is not None:
        first = prober.first_wrong(after=t_cause)
        facts["corruption_detected"] = first is not None
        facts["time_to_detect_s"] = round(first.t - t_cause, 2) if first else None
    if not got:
        problems.append(_not_fired(ctx, watch, rule, cause, alert_timeout, p.auto, t_cause))
        raise ScenarioError(problems[-1])
    note = _notified(ctx, watch, t_cause, facts) if p.auto else None
    if not p.auto and p.ack_s:
        ctx.wait(p.ack_s, "on-call acknowledgement")  # sees it fire, opens the runbook

    # ------------------------------------------------------------------ the runbook
    t_rb, m_rb = time.time(), time.monotonic()
    trigger_at = note.received if note is not None else watch.firing_at
    facts["time_to_runbook_s"] = round(t_rb - trigger_at, 2) if trigger_at else None
    if prober is not None:
        facts["known_answers_wrong_during"] = max(
            (r.failed for r in prober.rounds if r.t >= t_cause), default=0)
    try:
        runbook.run()
    finally:
        if note is None:  # manual: the notification was on its way while the runbook ran
            note = _notified(ctx, watch, t_cause, facts)
        facts["runbook_ok"] = runbook.ok
        facts["runbook_steps_ok"] = runbook.steps_ok
        facts["runbook_steps"] = len(runbook.plan)
        facts["downtime_s"] = runbook.downtime_s
        facts["team_notified"] = _team_notified(receiver, since, runbook) \
            if any(o.name == "notify" for o in runbook.plan) else None
    m_rb_end = time.monotonic()
    ledger2 = ctx.ledger() if ledger0 is not None else None

    with ctx.waiting("steady state after the runbook"):
        steady_from = _wait_steady_after(monitor, m_rb_end, p.steady.hold_s,
                                         m_rb_end + p.mitigate_within_s)
    facts["mitigated"] = steady_from is not None
    if steady_from is not None:
        facts["time_to_mitigate_s"] = round(steady_from - m_rb, 2)
    else:
        problems.append(f"not steady within {p.mitigate_within_s:g}s after runbook "
                        f"{p.runbook}: {', '.join(_reasons_since(monitor, m_rb_end))}")
    ctx.say(f"  mitigated: {facts['mitigated']}"
            + (f" {facts['time_to_mitigate_s']}s after the runbook started"
               if facts["mitigated"] else f" ({problems[-1]})"))
    report = probe.snapshot()
    after_rb = _samples(report, probe.started_at, m_rb_end, None)

    # ------------------------------------------------------------------ what this drill proves
    if kind == "load":
        replicas = ctx.stack.replicas
        facts["replicas_after_runbook"] = len(replicas) - len(
            unhealthy(replicas, ctx.contract.health_path))
        facts["replicas_serving"] = _replicas_serving(ctx)
        facts["admitted_p95_ms"] = _p95(after_rb)
        # the limit shown on a client that goes beyond it: the spike's own clients may
        # not (on a saturated machine every one of them is slowed below the limit)
        answers, _ = burst_from_one_client(ctx, _known_question(ctx), requests=40,
                                           concurrency=8)
        facts["rate_limited_burst_429"] = sum(1 for status, _, _ in answers if status == 429)
    if ledger0 is not None:
        ledger3 = ctx.ledger()
        backup_usage = LedgerDelta.between(ledger2, ledger3).models.get(backup)
        facts["backup_model_answers"] = backup_usage.chat_requests if backup_usage else 0
        facts["cost_per_request_primary_usd"], _ = _cost_per_request(prices, ledger0, ledger1,
                                                                     primary)
        facts["cost_per_request_backup_usd"], _ = _cost_per_request(prices, ledger2, ledger3,
                                                                    backup)
        facts["outage_answers_cached"] = _outage_answers(ctx, primary, t_cause)
        settled = _samples(report, probe.started_at, steady_from, None) if steady_from \
            else after_rb
        facts["error_ratio_after"] = round(sum(1 for s in settled if not s.ok)
                                           / len(settled), 4) if settled else None
    if cause.corruption is not None:
        wrong = check_known_answers(ctx)
        facts["known_answers_wrong_after"] = len(wrong)
        for line in wrong:
            ctx.say(f"  still wrong: {line}")
        with open_backup(cause.corruption.backup) as opened:
            cmp = compare_with(ctx.stack, opened)
        facts.update(keys_lost=cmp.keys_lost, keys_changed=cmp.keys_changed,
                     entities_lost=cmp.entities_lost, entities_changed=cmp.entities_changed,
                     search_mismatches=cmp.search_mismatches)
        ctx.say(f"  against the backup: {cmp.keys_lost} keys lost, {cmp.keys_changed} changed; "
                f"{cmp.entities_lost} entities lost, {cmp.entities_changed} changed; "
                f"{cmp.search_mismatches} searches differ")

    # ------------------------------------------------------------------ the cause removed
    t_removed = time.time()
    removed = cause.remove()
    if cause.load is not None and removed is not None:
        result = removed.result
        spike_429 = result.status_codes.get("429", 0)
        facts["rate_limited_429"] = spike_429 + facts.get("rate_limited_burst_429", 0)
        facts["load_requests"] = result.requests
        facts["load_rps"] = round(result.rps, 1)
        ctx.say(f"  spike: {result.summary()}; {spike_429} answered 429, and "
                f"{facts.get('rate_limited_burst_429', 0)} of 40 asked at once by one client")
    with ctx.waiting("alert resolution"):
        resolved: Notification | None = watch.wait(
            lambda w: w.notified("resolved", after=note.received if note else t_cause),
            resolve_timeout)
    facts["resolved"] = resolved is not None
    if resolved is not None:
        facts["resolved_by_runbook"] = resolved.received < t_removed
        facts["time_to_resolve_s"] = round(max(0.0, resolved.received - t_removed), 2)
        ctx.event("notify", f"{alert} resolved -> receiver", t=resolved.received,
                  source="alertmanager", status="resolved")
    else:
        problems.append(f"no resolved notification of {alert} within {resolve_timeout:.0f}s "
                        f"after the cause was removed (Prometheus: {watch.state})")

    # ------------------------------------------------------------------ recovery
    m_rec = time.monotonic()
    ledger4 = ctx.ledger() if ledger0 is not None else None
    if p.recover:
        RunbookRun(ctx, f"{p.runbook}-recover", alert=alert, operations=list(p.recover)).run()
    m_rec_end = time.monotonic()
    with ctx.waiting("steady state after the recovery"):
        back = _wait_steady_after(monitor, m_rec_end, p.steady.hold_s,
                                  m_rec_end + p.mitigate_within_s)
    facts["recovered"] = back is not None
    facts["recover_s"] = round((back if back is not None else time.monotonic()) - m_rec, 2)
    if back is None:
        problems.append(f"not steady again after the recovery: "
                        f"{', '.join(_reasons_since(monitor, m_rec_end))}")
    if ledger4 is not None:
        delta = LedgerDelta.between(ledger4, ctx.ledger())
        facts["primary_answers_after_recover"] = delta.models[primary].chat_requests \
            if primary in delta.models else 0

    report = probe.stop()
    during = _samples(report, probe.started_at, m_cause, None)
    facts["failed_requests_during"] = sum(1 for s in during if not s.ok)
    facts["probe_requests_during"] = len(during)
    facts["drill_seconds"] = round(time.time() - drill_t0, 2)
    facts["drill_ok"] = not problems and bool(facts["runbook_ok"])
    facts["drill_problems"] = "; ".join(problems) or None
    ctx.event("drill", f"drill {p.runbook}: {cause.label}", t=t_cause, end=time.time(),
              runbook=p.runbook, alert=alert, ok=facts["drill_ok"])
    _say_summary(ctx, facts)
    return facts


def _notified(ctx: ScenarioContext, watch: AlertWatch, t_cause: float,
              facts: dict[str, Any]) -> Notification | None:
    """The firing notification and its facts (in manual mode it may still be on its way)."""
    note = watch.notified("firing", after=t_cause) or watch.wait(
        lambda w: w.notified("firing", after=t_cause), 15.0)
    if note is None:
        return None
    facts["time_to_notify_s"] = round(note.received - t_cause, 2)
    if watch.firing_at is not None:
        facts["notify_delay_s"] = round(note.received - watch.firing_at, 2)
    facts["alert_payload_ok"] = not note.payload_problems
    if note.payload_problems:
        ctx.say(f"  the webhook lacks: {', '.join(note.payload_problems)}")
    ctx.event("notify", f"{note.name} firing -> receiver", t=note.received,
              source="alertmanager", status="firing", fingerprint=note.fingerprint)
    return note


def _known_question(ctx: ScenarioContext) -> str:
    """A question the agent has answered before (cached: it costs no LLM call)."""
    return ctx.config.known_answers[0].question if ctx.config.known_answers else "hello"


def _replicas_serving(ctx: ScenarioContext, requests: int = 40, concurrency: int = 8) -> int:
    """How many replicas answer through the load balancer: up to ``requests`` questions,
    each from a client of its own (a per-client rate limit lets every one through),
    ``concurrency`` at a time, until every replica of the stack has answered; 40 miss one
    of 5 round-robin replicas with a chance below 1 in 1,000."""
    seen: set[str] = set()
    everyone = len(ctx.stack.replicas)
    tag = uuid.uuid4().hex[:8]
    message = _known_question(ctx)

    def one(client: httpx.Client, i: int) -> str | None:
        try:
            reply = ctx.contract.ask(client, message, base_url=ctx.stack.lb_url,
                                     client_id=f"av-drill-count-{tag}-{i}", strict=False)
        except httpx.HTTPError:
            return None
        return reply.replica if reply.ok else None

    with _http.new_client(timeout=10.0) as client, \
            cf.ThreadPoolExecutor(max_workers=concurrency) as pool:
        for first in range(0, requests, concurrency):
            wave = range(first, min(first + concurrency, requests))
            seen.update(r for r in pool.map(lambda i: one(client, i), wave) if r)
            if len(seen) >= everyone:  # more questions cannot find more replicas
                break
    return len(seen)


def _team_notified(receiver: Any, since: int, runbook: RunbookRun) -> bool:
    """Every text the runbook sent is recorded at the receiver."""
    try:
        texts = {r.text for r in receiver.records(since, kind="notify")}
    except StackError:
        return False
    return bool(runbook.notified) and all(text in texts for _, text in runbook.notified)


def _outage_answers(ctx: ScenarioContext, model: str, t_cause: float) -> int:
    """Cached answers of the failing model written since the outage began (dated by the
    TTL the agent gave them)."""
    ttl_ms = ctx.config.cache.ttl * 1000
    now = time.time()
    return sum(1 for e in agent_ops.cache_entries(ctx.stack)
               if isinstance(e.value, dict) and e.value.get("model") == model and e.pttl_ms > 0
               and now - (ttl_ms - e.pttl_ms) / 1000 >= t_cause - 0.05)


def _say_summary(ctx: ScenarioContext, f: dict[str, Any]) -> None:
    def s(key: str) -> str:
        v = f.get(key)
        return "-" if v is None else f"{v}s"

    ctx.say(f"  alert {s('time_to_alert_s')}, notified {s('time_to_notify_s')}, runbook "
            f"{s('time_to_runbook_s')} after, mitigated {s('time_to_mitigate_s')}, resolved "
            f"{s('time_to_resolve_s')} after the cause was removed; "
            f"{f.get('failed_requests_during')} of {f.get('probe_requests_during')} probe "
            f"requests failed" + (f"; problems: {f['drill_problems']}"
                                  if f.get("drill_problems") else ""))


# ------------------------------------------------------------------------------ runbook


class RunbookParams(StepParams):
    name: str = Field(..., pattern=r"^[a-z][a-z0-9_]*$")
    alert: str | None = None


@step("runbook", params=RunbookParams,
      facts=("runbook_ok", "runbook_steps_ok", "runbook_steps", "runbook_seconds",
             "downtime_s"))
def runbook_step(ctx: ScenarioContext, params: RunbookParams) -> dict[str, Any]:
    """Run a runbook of the config now (each operation timed; a failure is notified)."""
    run = RunbookRun(ctx, params.name, alert=params.alert).run()
    return {"runbook_ok": run.ok, "runbook_steps_ok": run.steps_ok,
            "runbook_steps": len(run.plan),
            "runbook_seconds": round((run.ended or 0) - (run.started or 0), 3),
            "downtime_s": run.downtime_s}


# ------------------------------------------------------------------------------ corrupt


@step("corrupt", params=CorruptParams,
      facts=("vectors_noised", "entities_deleted", "answers_poisoned",
             "known_answers_wrong"))
def corrupt(ctx: ScenarioContext, params: CorruptParams) -> dict[str, Any]:
    """Damage the live data (backed up first; repaired after the scenario if no runbook
    restores it), and count the known-answer questions it makes wrong."""
    found = corrupt_stack(ctx, noise=params.noise, delete=params.delete,
                          poison_cache_ratio=params.poison_cache, collection=params.collection,
                          seed=params.seed)
    wrong = check_known_answers(ctx)
    for line in wrong:
        ctx.say(f"  wrong: {line}")
    return {"vectors_noised": found.vectors_noised, "entities_deleted": found.entities_deleted,
            "answers_poisoned": found.answers_poisoned, "known_answers_wrong": len(wrong)}


# ------------------------------------------------------------------------------ rule tests


@step("alert_rules_test", facts=("alert_rules_tests", "alert_rules_failed",
                                 "alert_rules_problems"))
def alert_rules_test(ctx: ScenarioContext, params: StepParams) -> dict[str, Any]:
    """``promtool test rules`` on this environment's rendered alert rules: each fires on
    realistic input beyond its threshold and stays quiet below it."""
    result = run_rule_tests(ctx.config)
    for line in result.failed:
        ctx.say(f"  FAILED {line}")
    ctx.say(f"  promtool test rules: {result.tests - len(result.failed)} of {result.tests} "
            "passed")
    return {"alert_rules_tests": result.tests, "alert_rules_failed": len(result.failed),
            "alert_rules_problems": "; ".join(result.failed) or None}
