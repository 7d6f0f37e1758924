"""Smoke steps: the stack answers, caches, is scraped, and its dashboard has data.

These are the checks of the bundled smoke gate (``scenarios/smoke.yaml``), each a step
that measures facts:

===============  ===========================================================================
``health``       GET the contract's health path on every replica directly (the seed's
                 health-check step)
``chat``         one chat request through the load balancer, answered with retrieved
                 sources
``cache_repeat`` the same question again: answered from cache with no new LLM call
``traffic``      N questions from the prompt set through the load balancer, concurrently
``targets``      Prometheus scrapes every replica, all up
``dashboard``    every panel query of the Grafana dashboard returns data
===============  ===========================================================================

Every request goes through the agent's :class:`~agentverify.contract.AgentContract`; a
fact the agent's reply or metrics cannot give is
:class:`~agentverify.gates.Inconclusive`, never a pass.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import Field

from agentverify import _http
from agentverify.errors import ConfigError, ContractError, ScenarioError
from agentverify.gates import Inconclusive
from agentverify.scenarios.registry import StepParams, step

if TYPE_CHECKING:
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["load_prompts", "unhealthy"]


def load_prompts(path: Path) -> list[str]:
    """Prompts of a JSON-lines file (``{"prompt": ...}`` per line)."""
    prompts = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read prompts ({exc.strerror})", source=str(path)) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            prompts.append(str(item["prompt"]))
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"line {n}: expected a JSON object with a 'prompt' key",
                              source=str(path)) from None
    if not prompts:
        raise ConfigError("no prompts in file", source=str(path))
    return prompts


def unhealthy(replicas: list[Any], path: str) -> list[str]:
    """GET ``path`` on each replica directly, all at once; one line per replica that did
    not answer 200 (in the replicas' order)."""
    def check(r: Any) -> str | None:
        try:
            resp = _http.client().get(r.url + path, timeout=5.0)
        except httpx.HTTPError as exc:
            return f"{r.instance}: {type(exc).__name__}: {exc}"
        return None if resp.status_code == 200 else \
            f"{r.instance}: {resp.status_code} {resp.text[:120]}"

    with cf.ThreadPoolExecutor(max_workers=max(1, len(replicas))) as pool:
        return [line for line in pool.map(check, replicas) if line]


@step("health", facts=("replicas", "healthy_replicas", "unhealthy_replicas"))
def health(ctx: ScenarioContext, params: StepParams) -> dict[str, Any]:
    """GET the health path on every replica directly; each must answer 200."""
    replicas = ctx.stack.replicas
    bad = unhealthy(replicas, ctx.config.stack.agent.contract.health_path)
    for line in bad:
        ctx.say(f"  unhealthy {line}")
    return {"replicas": len(replicas), "healthy_replicas": len(replicas) - len(bad),
            "unhealthy_replicas": len(bad)}


class ChatParams(StepParams):
    message: str = Field("How do I reset my password?", min_length=1)


def _not_mapped(key: str, what: str) -> Inconclusive:
    return Inconclusive(f"stack.agent.contract.reply.{key} is null: the reply does not "
                        f"say {what}")


@step("chat", params=ChatParams,
      facts=("chat_status", "chat_sources", "chat_answer_chars", "chat_version"))
def chat(ctx: ScenarioContext, params: ChatParams) -> dict[str, Any]:
    """One question through the load balancer; the answer must cite retrieved sources."""
    reply = ctx.ask(params.message)
    facts: dict[str, Any] = {"chat_status": reply.status}
    if reply.ok:
        contract = ctx.contract
        facts.update(
            chat_sources=(len(reply.sources) if reply.sources is not None
                          else _not_mapped("sources", "which sources the answer used")),
            chat_answer_chars=len(reply.answer or ""),
            chat_version=(reply.version if contract.maps("version")
                          else _not_mapped("version", "which version answered")))
        titles = ", ".join(reply.sources or ()) or "none"
        ctx.say(f"  answered {reply.describe()}, sources: {titles}")
    else:
        ctx.say(f"  the chat request answered {reply.describe()}")
    return facts


@step("cache_repeat", params=ChatParams,
      facts=("cache_repeat_cached", "cache_repeat_llm_requests", "cache_repeat_tokens"))
def cache_repeat(ctx: ScenarioContext, params: ChatParams) -> dict[str, Any]:
    """Ask, then ask again: the repeat must come from Redis with no new LLM request.

    The LLM ledger is the evidence for any agent (the repeat made no LLM call); an agent
    whose reply says whether it was cached must say so too.
    """
    first = ctx.ask(params.message)
    if not first.ok:
        raise ScenarioError(f"the chat request answered {first.describe()}")
    before = ctx.ledger()
    again = ctx.ask(params.message)
    after = ctx.ledger()
    if not again.ok:
        raise ScenarioError(f"the repeated chat request answered {again.describe()}")
    tokens = sum(after.get(k, 0) - before.get(k, 0)
                 for k in ("prompt_tokens", "completion_tokens", "embedding_tokens"))
    calls = after["requests"] - before["requests"]
    if again.cached is False:
        ctx.say("  the repeat says it was not cached (reply.cached is false)")
    return {"cache_repeat_cached": calls == 0 and again.cached is not False,
            "cache_repeat_llm_requests": calls,
            "cache_repeat_tokens": tokens}


class TrafficParams(StepParams):
    requests: int = Field(60, ge=1, le=100_000)
    concurrency: int = Field(4, ge=1, le=256)


@step("traffic", params=TrafficParams,
      facts=("traffic_requests", "traffic_failed", "traffic_error_ratio",
             "traffic_replicas_seen"))
def traffic(ctx: ScenarioContext, params: TrafficParams) -> dict[str, Any]:
    """N questions from the prompt set through the load balancer, concurrently."""
    prompts = load_prompts(ctx.config.path(ctx.config.load.prompts))
    contract = ctx.contract
    statuses: Counter[str] = Counter()
    replicas: set[str] = set()
    problems: list[str] = []
    t0 = time.monotonic()

    def one(i: int, client: httpx.Client) -> tuple[str, str | None]:
        try:
            reply = contract.ask(client, prompts[i % len(prompts)], base_url=ctx.stack.lb_url)
        except httpx.HTTPError as exc:
            return type(exc).__name__, None
        except ContractError as exc:
            problems.append(str(exc))
            return "contract", None
        return str(reply.status), reply.replica

    with _http.new_client(timeout=30.0) as client, \
            cf.ThreadPoolExecutor(max_workers=params.concurrency) as pool:
        for status, replica in pool.map(lambda i: one(i, client), range(params.requests)):
            statuses[status] += 1
            if replica is not None:
                replicas.add(replica)
    if problems:
        raise ContractError(problems[0])
    failed = sum(n for s, n in statuses.items() if s != "200")
    ctx.say(f"  {params.requests} requests in {time.monotonic() - t0:.1f}s, "
            f"statuses {dict(statuses)}, replicas seen {sorted(replicas)}")
    return {"traffic_requests": params.requests, "traffic_failed": failed,
            "traffic_error_ratio": failed / params.requests,
            "traffic_replicas_seen": (len(replicas) if contract.maps("replica") else
                                      _not_mapped("replica", "which replica answered"))}


class TargetsParams(StepParams):
    timeout_s: float = Field(30.0, gt=0)


@step("targets", params=TargetsParams, facts=("targets_expected", "targets_up", "targets_down"))
def targets(ctx: ScenarioContext, params: TargetsParams) -> dict[str, Any]:
    """Prometheus scrapes every replica of the agent, and every one is up."""
    if ctx.contract.metrics_path is None:
        why = Inconclusive("stack.agent.contract.metrics_path is null: the agent serves no "
                           "metrics for Prometheus to scrape")
        return {"targets_expected": len(ctx.stack.replicas), "targets_up": why,
                "targets_down": why}
    expected = {"%s:%d" % r.handle.address("http") for r in ctx.stack.replicas}
    deadline = time.monotonic() + params.timeout_s
    # a wait on Prometheus' own timing: a changed target file reaches the scrape pools
    # through two throttles of 5 s each, hard-coded (discovery's updates, the scrape
    # manager's reloads), then the first scrape (the scrape interval)
    with ctx.waiting("target discovery"):
        while True:
            found = {t.instance: t.health for t in ctx.prometheus.targets("ai-agent")}
            up = {i for i, h in found.items() if i in expected and h == "up"}
            if up == expected or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    down = sorted(expected - up)
    if down:
        ctx.say(f"  targets not up: {down} (Prometheus sees {found})")
    return {"targets_expected": len(expected), "targets_up": len(up),
            "targets_down": len(down)}


class AlertParams(StepParams):
    name: str = Field(..., min_length=1, description="the alert rule (e.g. AgentReplicaDown)")
    states: list[Literal["pending", "firing"]] = Field(default_factory=lambda: ["pending",
                                                                                "firing"])
    timeout_s: float = Field(30.0, gt=0)


@step("alert", params=AlertParams, facts=("alert_state", "alert_seen_s"))
def alert(ctx: ScenarioContext, params: AlertParams) -> dict[str, Any]:
    """Prometheus holds the alert in one of ``states`` within ``timeout_s``."""
    t0 = time.monotonic()
    deadline = t0 + params.timeout_s
    state = "none"
    while True:
        found = [a.state for a in ctx.prometheus.alerts() if a.name == params.name]
        # firing outranks pending: report the furthest state seen
        state = "firing" if "firing" in found else found[0] if found else "none"
        if state in params.states or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    seconds = time.monotonic() - t0
    # the alert path's own delays (rate window, for, scrape and evaluation), as in a
    # drill; an alert that never came waited out the step's timeout instead
    ctx.waited(seconds, "alert" if state in params.states else "alert timeout")
    if state in params.states:
        ctx.event("alert", f"{params.name} {state}", source="prometheus")
    ctx.say(f"  alert {params.name}: {state} after {seconds:.1f}s")
    return {"alert_state": state, "alert_seen_s": round(seconds, 2)}


class DashboardParams(StepParams):
    path: str | None = None
    timeout_s: float = Field(30.0, gt=0)


@step("dashboard", params=DashboardParams,
      facts=("dashboard_panels", "dashboard_panels_with_data", "dashboard_panels_empty",
             "dashboard_panels_inconclusive"))
def dashboard(ctx: ScenarioContext, params: DashboardParams) -> dict[str, Any]:
    """Every panel query of the Grafana dashboard returns a non-empty series.

    The shipped dashboard draws the agent's own series (``monitoring.metrics``); a panel
    whose metric the agent does not export is inconclusive, and so is
    ``dashboard_panels_empty`` unless another panel is plainly empty.
    """
    from agentverify.monitoring.dashboard import (
        check_dashboard,
        dashboard_for,
        inconclusive_panels,
        load_dashboard,
    )
    from agentverify.monitoring.metrics import replica_exports

    if params.path:
        board, skip = load_dashboard(ctx.config.path(params.path)), {}
    else:
        metrics = ctx.config.monitoring.metrics
        exported, where = replica_exports(ctx.stack, ctx.contract.metrics_path)
        board, skip = dashboard_for(metrics), inconclusive_panels(metrics, exported, where)
    check = check_dashboard(board, ctx.prometheus, timeout=params.timeout_s,
                            inconclusive=skip)
    for line in str(check).splitlines():
        ctx.say(f"  {line}")
    empty: Any = len(check.failed)
    if not empty and check.inconclusive:
        empty = Inconclusive("; ".join(f"panel {p.title!r}: {p.inconclusive}"
                                       for p in check.inconclusive))
    return {"dashboard_panels": check.panels_total,
            "dashboard_panels_with_data": check.panels_with_data,
            "dashboard_panels_empty": empty,
            "dashboard_panels_inconclusive": len(check.inconclusive)}
