"""Fault steps: network faults on any edge, HTTP faults of the LLM, crashes, steady state.

==================  ===================================================================
``fault``           a Toxiproxy toxic (or ``down``) on one edge for some or all replicas:
                    ``redis``, ``milvus``, ``llm`` (replica -> dependency), ``agent``
                    (nginx -> replica), ``lb`` (clients -> nginx); held ``duration_s``
``fault_clear``     remove faults early (all, or one by ``name``)
``llm_fault``       HTTP-level faults of the LLM endpoint Toxiproxy cannot make: 429 with
                    Retry-After, 500, 503, added latency, hangs, at a rate
``kill``            SIGKILL a replica or a service (nginx still lists a killed replica)
``restart``         bring a killed replica or service back, health-gated
``steady_state``    start checking the steady-state hypothesis; facts ``steady_before``
``steady_state_verify``  wait until steady again; ``steady_after``, ``deviation_seconds``,
                    ``detect_s``, ``recover_s``
==================  ===================================================================

Every fault is removed: its removal is deferred when it is applied, so it runs after a
failed or interrupted scenario too, and it is verified (the proxy is listed enabled and
without the toxic; the LLM stub reports no active fault). A fault that cannot be
removed fails the scenario with :class:`~agentverify.errors.FaultInjectionError`.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from agentverify import _http
from agentverify.errors import FaultInjectionError, ScenarioError, StackError
from agentverify.faults.steady import Hypothesis, SteadyStateMonitor
from agentverify.scenarios.registry import StepParams, step
from agentverify.scenarios.smoke import unhealthy
from agentverify.stack.routes import edge_name, instance_edge_name

if TYPE_CHECKING:
    from agentverify.scenarios.probe import Probe
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["TOXIC_ATTRIBUTES", "ActiveFault"]

#: attributes each toxic takes (Toxiproxy's names; times in ms, slicer delay in µs)
TOXIC_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
    "noop": (),
    "down": (),  # not a toxic: the proxy is disabled (refuses, and closes live connections)
}
FAULTS_KEY = "faults"
STEADY_KEY = "steady_state"
KILLED_KEY = "killed"


@dataclass
class ActiveFault:
    """A fault in force: where, what, since when (monotonic and unix time)."""

    name: str
    kind: str
    target: str
    proxies: list[str]
    label: str
    started: float
    started_unix: float
    ended: float | None = None
    removed: bool = False
    #: monotonic time a background timer removes it (``wait: false`` with a duration)
    ends_at: float | None = None
    remove: Any = None
    detail: dict[str, Any] = field(default_factory=dict)
    #: a background timer and the scenario's clean-up may both end it
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def _faults(ctx: ScenarioContext) -> list[ActiveFault]:
    return ctx.state.setdefault(FAULTS_KEY, [])


def fault_windows(ctx: ScenarioContext) -> list[tuple[float, float | None]]:
    """``(on, off)`` monotonic times of every fault of the scenario so far."""
    return [(f.started, f.ended) for f in _faults(ctx)]


def _record(ctx: ScenarioContext, fault: ActiveFault) -> None:
    """Put the fault on the report's timeline once it is over."""
    ctx.event("fault" if fault.kind != "kill" else "kill", fault.label, t=fault.started_unix,
              end=time.time(), target=fault.target, proxies=fault.proxies, **fault.detail)


def _end(ctx: ScenarioContext, fault: ActiveFault) -> None:
    """Remove one fault (idempotent), verify it is gone, and journal it."""
    with fault.lock:
        if fault.removed:
            return
        fault.remove()
        fault.removed = True
        fault.ended = time.monotonic()
    _record(ctx, fault)
    ctx.say(f"  fault removed: {fault.label}")


def _hold(ctx: ScenarioContext, fault: ActiveFault, duration_s: float | None,
          wait: bool) -> float:
    """Keep the fault for ``duration_s`` (blocking, or in the background); seconds held."""
    if duration_s is None:
        return 0.0
    if wait:
        ctx.wait(duration_s, "fault held")
        _end(ctx, fault)
        return duration_s
    fault.ends_at = time.monotonic() + duration_s
    timer = threading.Timer(duration_s, lambda: _end(ctx, fault))
    timer.daemon = True
    timer.start()
    ctx.defer(f"stop the timer of {fault.label}", timer.cancel)
    return duration_s


class FaultParams(StepParams):
    target: Literal["redis", "milvus", "llm", "agent", "lb"]
    replicas: list[str] | Literal["all"] = "all"
    toxic: Literal["latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer",
                   "limit_data", "noop", "down"]
    stream: Literal["upstream", "downstream"] = "downstream"
    #: Toxiproxy's attributes are integers (ms, KB/s, bytes, µs)
    attributes: dict[str, int] = Field(default_factory=dict)
    toxicity: float = Field(1.0, ge=0, le=1)
    duration_s: float | None = Field(None, gt=0, le=3600,
                                     description="None: until fault_clear or the scenario ends")
    wait: bool = Field(True, description="hold the step for duration_s (false: remove it "
                                         "in the background after duration_s)")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="after")
    def _attributes_of_the_toxic(self) -> FaultParams:
        valid = TOXIC_ATTRIBUTES[self.toxic]
        unknown = sorted(set(self.attributes) - set(valid))
        if unknown:
            raise ValueError(f"attributes: {self.toxic} takes {', '.join(valid) or 'none'}, "
                             f"not {', '.join(unknown)}")
        if self.target == "lb" and self.replicas != "all":
            raise ValueError("replicas: the lb edge is one for all clients: use 'all'")
        return self

    @field_validator("replicas")
    @classmethod
    def _replica_names(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list) and (not v or not all(r.startswith("agent-") for r in v)):
            raise ValueError("expected 'all' or a list like [agent-0, agent-1]")
        return v


def _proxies(ctx: ScenarioContext, params: FaultParams) -> list[str]:
    try:
        ctx.stack.faults.require(params.target)
    except StackError as exc:
        raise ScenarioError(f"fault: {exc}") from exc
    replicas = ctx.stack.replicas
    if params.replicas != "all":
        known = {r.instance for r in replicas}
        missing = [r for r in params.replicas if r not in known]
        if missing:
            raise ScenarioError(f"fault: no replica {', '.join(missing)} "
                                f"(replicas: {', '.join(sorted(known))})")
        replicas = [r for r in replicas if r.instance in params.replicas]
    if params.target == "lb":
        return ["lb"]
    if params.target == "agent":
        return [instance_edge_name(r.handle) for r in replicas]
    return [edge_name(params.target, r.instance) for r in replicas]


@step("fault", params=FaultParams, facts=("fault_proxies", "fault_seconds", "fault_removed"))
def fault(ctx: ScenarioContext, params: FaultParams) -> dict[str, Any]:
    """Apply a Toxiproxy toxic (or take the edge down) for some or all replicas."""
    routes = ctx.stack.faults
    client = routes.client
    proxies = _proxies(ctx, params)
    toxic_name = f"av-{params.name or params.toxic}-{uuid.uuid4().hex[:6]}"
    label = (f"{params.target} {params.toxic}"
             + (f" {params.attributes}" if params.attributes else "")
             + ("" if params.replicas == "all" else f" on {', '.join(params.replicas)}"))
    applied: list[str] = []

    def remove() -> None:
        problems = []
        for proxy in applied:
            try:
                if params.toxic == "down":
                    client.enable(proxy)
                else:
                    client.remove_toxic(proxy, toxic_name)
            except FaultInjectionError as exc:
                if "not found" not in str(exc):  # an instance retired meanwhile
                    problems.append(str(exc))
        # verified: every proxy that still exists is enabled and without the toxic
        listed = client.proxies()
        for proxy in applied:
            p = listed.get(proxy)
            if p is not None and (not p.enabled or any(t.name == toxic_name for t in p.toxics)):
                problems.append(f"{proxy} still has the fault (enabled={p.enabled}, "
                                f"toxics={[t.name for t in p.toxics]})")
        if problems:
            raise FaultInjectionError(f"fault {label!r} could not be removed: "
                                      + "; ".join(problems))

    fault = ActiveFault(name=params.name or toxic_name, kind=params.toxic, target=params.target,
                        proxies=proxies, label=label, started=time.monotonic(),
                        started_unix=time.time(), remove=remove,
                        detail={"toxic": params.toxic, "stream": params.stream,
                                "attributes": params.attributes})
    # deferred first: whatever happens next (a half-applied fault included), it goes
    ctx.defer(f"remove fault {label}", lambda: _end(ctx, fault))
    _faults(ctx).append(fault)
    for proxy in proxies:
        if params.toxic == "down":
            client.disable(proxy)
        else:
            client.add_toxic(proxy, params.toxic, name=toxic_name, stream=params.stream,
                             toxicity=params.toxicity, attributes=dict(params.attributes))
        applied.append(proxy)
    ctx.say(f"  fault on: {label} ({len(proxies)} proxies"
            + (f", for {params.duration_s:g}s)" if params.duration_s else ")"))
    held = _hold(ctx, fault, params.duration_s, params.wait)
    return {"fault_proxies": len(proxies), "fault_seconds": held,
            "fault_removed": fault.removed}


class FaultClearParams(StepParams):
    name: str | None = None


@step("fault_clear", params=FaultClearParams, facts=("faults_cleared",))
def fault_clear(ctx: ScenarioContext, params: FaultClearParams) -> dict[str, Any]:
    """Remove faults before their time: every one, or the one named."""
    chosen = [f for f in _faults(ctx) if not f.removed
              and (params.name is None or f.name == params.name)]
    if params.name is not None and not chosen:
        raise ScenarioError(f"fault_clear: no active fault named {params.name!r}")
    for f in chosen:
        _end(ctx, f)
    return {"faults_cleared": len(chosen)}


class LLMFaultParams(StepParams):
    status: int = Field(500, ge=400, le=599)
    rate: float = Field(1.0, ge=0, le=1, description="share of matching requests that fail")
    retry_after_s: float | None = Field(None, ge=0, le=3600, description="429/503 only")
    latency_ms: float = Field(0.0, ge=0, le=600_000)
    mode: Literal["error", "hang"] = "error"
    hang_s: float | None = Field(None, gt=0, le=3600)
    first_n: int | None = Field(None, ge=1)
    models: list[str] | None = None
    endpoints: list[Literal["chat", "embeddings"]] | None = None
    duration_s: float | None = Field(None, gt=0, le=3600)
    wait: bool = True

    def body(self) -> dict[str, Any]:
        """The LLM stub's ``POST /faults`` body."""
        body: dict[str, Any] = {"status_code": self.status, "error_rate": self.rate,
                                "latency_ms": self.latency_ms, "mode": self.mode}
        if self.status in (429, 503):
            body["retry_after_s"] = self.retry_after_s
        elif self.retry_after_s is not None:
            raise ScenarioError("llm_fault: retry_after_s goes with status 429 or 503")
        for key in ("hang_s", "first_n", "models", "endpoints"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        return body


@step("llm_fault", params=LLMFaultParams,
      facts=("llm_fault_matched", "llm_fault_injected", "llm_fault_removed"))
def llm_fault(ctx: ScenarioContext, params: LLMFaultParams) -> dict[str, Any]:
    """HTTP faults of the LLM API (429 + Retry-After, 5xx, latency, hangs) at a rate."""
    if ctx.config.model.base_url:
        raise ScenarioError("llm_fault needs the stack's LLM stub (model.base_url is set to a "
                            "real provider)")
    url = ctx.stack.endpoints["llm"] + "/faults"
    body = params.body()
    label = (f"llm {params.mode} {params.status} at {params.rate:g}"
             + (f" +{params.latency_ms:g} ms" if params.latency_ms else ""))
    counts: dict[str, Any] = {}

    def call(method: str, payload: Any = None) -> dict[str, Any]:
        try:
            resp = _http.client().request(method, url, json=payload, timeout=10.0)
        except Exception as exc:  # httpx errors: the stub is gone
            raise FaultInjectionError(f"llm_fault: {method} {url}: {exc}") from exc
        if resp.status_code >= 400:
            raise FaultInjectionError(f"llm_fault: {method} {url} answered "
                                      f"{resp.status_code}: {resp.text[:300]}")
        return resp.json()

    def remove() -> None:
        seen = call("GET")
        counts.update(matched=seen.get("matched", 0), injected=seen.get("injected", 0))
        after = call("DELETE")
        if after.get("active"):
            raise FaultInjectionError(f"llm_fault {label!r} is still active after DELETE: "
                                      f"{after}")

    fault = ActiveFault(name="llm", kind="llm", target="llm", proxies=[], label=label,
                        started=time.monotonic(), started_unix=time.time(), remove=remove,
                        detail={"body": body})
    ctx.defer(f"remove {label}", lambda: _end(ctx, fault))
    _faults(ctx).append(fault)
    call("POST", body)
    ctx.say(f"  LLM fault on: {label}")
    _hold(ctx, fault, params.duration_s, params.wait)
    return {"llm_fault_matched": counts.get("matched"),
            "llm_fault_injected": counts.get("injected"),
            "llm_fault_removed": fault.removed}


class KillParams(StepParams):
    target: str = Field(..., pattern=r"^[a-z][a-z0-9-]*$",
                        description="a replica (agent-1) or a service (redis, milvus, ...)")


@step("kill", params=KillParams, facts=("killed",))
def kill(ctx: ScenarioContext, params: KillParams) -> dict[str, Any]:
    """SIGKILL a replica or a service; it stays listed where it was (a crash)."""
    try:
        ctx.stack.kill(params.target)
    except StackError as exc:
        raise ScenarioError(f"kill: {exc}") from exc
    killed = ctx.state.setdefault(KILLED_KEY, {})
    fault = ActiveFault(name=params.target, kind="kill", target=params.target, proxies=[],
                        label=f"kill {params.target}", started=time.monotonic(),
                        started_unix=time.time(), remove=lambda: None)
    killed[params.target] = fault
    _faults(ctx).append(fault)

    def revive() -> None:  # an interrupted scenario must not leave the stack short
        if not fault.removed:
            ctx.stack.revive(params.target)
            _end(ctx, fault)

    ctx.defer(f"bring {params.target} back", revive)
    ctx.say(f"  killed {params.target}")
    return {"killed": params.target}


class RestartParams(StepParams):
    target: str = Field("agents", pattern=r"^[a-z][a-z0-9-]*$",
                        description="agents: every replica, one at a time, drained (the "
                                    "seed's restart()); or one replica / service")
    health_timeout_s: float | None = Field(None, gt=0)


@step("restart", params=RestartParams,
      facts=("restart_seconds", "healthy_replicas_after"), timeline="rollout")
def restart(ctx: ScenarioContext, params: RestartParams) -> dict[str, Any]:
    """Restart every replica (rolling, drained), or bring one replica or service back."""
    t0 = time.monotonic()
    try:
        if params.target == "agents":
            rollout = ctx.stack.restart_agents(health_timeout=params.health_timeout_s)
            if rollout.failure:
                raise ScenarioError(f"restart: {rollout.failure}")
        else:
            ctx.stack.revive(params.target, health_timeout=params.health_timeout_s)
    except StackError as exc:
        raise ScenarioError(f"restart {params.target}: {exc}") from exc
    fault = ctx.state.get(KILLED_KEY, {}).get(params.target)
    if fault is not None:
        _end(ctx, fault)
    replicas = ctx.stack.replicas
    bad = unhealthy(replicas, ctx.contract.health_path)
    seconds = time.monotonic() - t0
    ctx.say(f"  {params.target} back in {seconds:.1f}s; {len(replicas) - len(bad)} of "
            f"{len(replicas)} replicas healthy")
    return {"restart_seconds": round(seconds, 3), "healthy_replicas_after": len(replicas) - len(bad)}


class SteadyStateParams(StepParams):
    error_ratio: float | None = Field(0.01, ge=0, le=1)
    p95_ms: float | None = Field(None, gt=0, description="default: the environment's slo.p95_ms")
    healthy_replicas: int | None = Field(None, ge=0,
                                         description="default: stack.replicas; 0: not checked")
    known_answers: bool = True
    window_s: float = Field(2.0, gt=0, le=60)
    interval_s: float = Field(0.5, gt=0, le=10)
    before_s: float = Field(3.0, ge=0, le=600)


@dataclass
class _Steady:
    monitor: SteadyStateMonitor
    before_until: float
    own_probe: Probe | None = None


@step("steady_state", params=SteadyStateParams, facts=("steady_before",))
def steady_state(ctx: ScenarioContext, params: SteadyStateParams) -> dict[str, Any]:
    """Check the steady-state hypothesis for ``before_s``, then keep checking it."""
    from agentverify.scenarios.probe import Probe
    from agentverify.scenarios.rolling_update import PROBE_KEY

    if STEADY_KEY in ctx.state:
        raise ScenarioError("steady_state is already being checked (steady_state_verify ends it)")
    probe = ctx.state.get(PROBE_KEY)
    own = None
    if probe is None:  # no probe_start: the hypothesis needs traffic to judge
        own = probe = Probe(ctx.stack.lb_url, rps=10, contract=ctx.contract).start()
        ctx.defer("stop the steady-state probe", own.stop)
    hypothesis = Hypothesis(
        error_ratio=params.error_ratio,
        p95_ms=params.p95_ms if params.p95_ms is not None else ctx.config.slo.p95_ms,
        healthy_replicas=ctx.config.stack.replicas if params.healthy_replicas is None
        else params.healthy_replicas,
        known_answers=params.known_answers, window_s=params.window_s,
        interval_s=params.interval_s)
    monitor = SteadyStateMonitor(ctx, hypothesis, probe).start()
    ctx.defer("stop the steady-state monitor", monitor.stop)
    ctx.say(f"  steady state: {hypothesis.describe()}")
    ctx.wait(max(params.before_s, params.window_s), "steady state before")
    before_until = time.monotonic()
    ctx.state[STEADY_KEY] = _Steady(monitor, before_until, own)
    verdict = monitor.verdict(before_until=before_until, faults=[], steady_from=None)
    if not verdict.steady_before:
        ctx.say(f"  not steady before the faults: {verdict.reasons}")
    return {"steady_before": verdict.steady_before}


class SteadyVerifyParams(StepParams):
    within_s: float = Field(30.0, gt=0, le=3600,
                            description="how long after the last fault the system may take")
    hold_s: float | None = Field(None, gt=0, description="steady for this long (default: "
                                                          "the window)")


@step("steady_state_verify", params=SteadyVerifyParams,
      facts=("steady_after", "deviation_seconds", "detect_s", "recover_s"))
def steady_state_verify(ctx: ScenarioContext, params: SteadyVerifyParams) -> dict[str, Any]:
    """Wait until the hypothesis holds again; measure the deviation and the recovery."""
    steady: _Steady | None = ctx.state.pop(STEADY_KEY, None)
    if steady is None:
        raise ScenarioError("steady_state_verify without steady_state")
    monitor = steady.monitor
    windows = fault_windows(ctx)
    still_on = [f.label for f in _faults(ctx) if not f.removed and f.kind != "kill"]
    if still_on:
        ctx.say(f"  note: faults still on while verifying: {still_on}")
    hold = params.hold_s or monitor.hypothesis.window_s
    offs = [off for _, off in windows if off is not None]
    start = max([time.monotonic(), *offs])
    steady_from = monitor.wait_steady(hold_s=hold, until=start + params.within_s)
    monitor.stop()
    verdict = monitor.verdict(before_until=steady.before_until, faults=windows,
                              steady_from=steady_from)
    facts = verdict.facts()
    detect = "no effect seen" if facts["detect_s"] is None else \
        f"first effect {facts['detect_s']}s after the fault"
    recover = "" if facts["recover_s"] is None else \
        f"; steady {facts['recover_s']}s after the last fault ended"
    ctx.say(f"  steady after: {verdict.steady_after}; deviated {facts['deviation_seconds']}s; "
            f"{detect}{recover}" + (f"; reasons: {verdict.reasons}" if verdict.reasons else ""))
    return facts


class DependencyHealthParams(StepParams):
    dependency: Literal["redis", "milvus"]
    expect: Literal["down", "up"]
    timeout_s: float = Field(5.0, gt=0, le=600)


@step("dependency_health", params=DependencyHealthParams,
      facts=("dependency_health_ok", "dependency_health_s", "dependency_health_named"))
def dependency_health(ctx: ScenarioContext, params: DependencyHealthParams) -> dict[str, Any]:
    """Every replica's health check says the dependency is down (503 naming it), or up
    again (200), within ``timeout_s``: a health check that ignores a dependency is how a
    fleet keeps serving traffic it cannot answer."""
    path = ctx.contract.health_path
    t0 = time.monotonic()
    deadline = t0 + params.timeout_s
    named = False
    while True:
        answers = []
        for replica in ctx.stack.replicas:
            try:
                resp = _http.client().get(replica.url + path, timeout=3.0)
                answers.append((replica.instance, resp.status_code, resp.text))
            except Exception as exc:  # httpx errors: no answer at all
                answers.append((replica.instance, None, f"{type(exc).__name__}: {exc}"))
        if params.expect == "down":
            named = all(code == 503 and params.dependency in text.lower()
                        for _, code, text in answers)
            ok = all(code is not None and code != 200 for _, code, _ in answers) and named
        else:
            ok = all(code == 200 for _, code, _ in answers)
        if ok or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    seconds = time.monotonic() - t0
    # waiting here for a fault held in the background to end is that fault's duration
    scheduled = [f.ends_at for f in _faults(ctx) if f.ends_at is not None]
    if scheduled:
        ctx.waited(max(0.0, min(max(scheduled), time.monotonic()) - t0), "fault held")
    if not ok:
        for instance, code, text in answers:
            ctx.say(f"  {instance}: {code} {text[:160]}")
    ctx.say(f"  {params.dependency} {params.expect}: health "
            f"{'agrees' if ok else 'does NOT agree'} after {seconds:.2f}s")
    return {"dependency_health_ok": ok, "dependency_health_s": round(seconds, 3),
            "dependency_health_named": named if params.expect == "down" else None}
