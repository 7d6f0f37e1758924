"""Smoke steps: the stack answers, caches, is scraped, and its dashboard has data.

These are the checks of the bundled smoke gate (``scenarios/smoke.yaml``), each a step
that measures facts:

===============  ===========================================================================
``health``       GET /health on every replica directly (the seed's health-check step)
``chat``         one /chat through the load balancer, answered with retrieved sources
``cache_repeat`` the same question again: answered from cache with no new LLM call
``traffic``      N questions from the prompt set through the load balancer, concurrently
``targets``      Prometheus scrapes every replica, all up
``dashboard``    every panel query of the Grafana dashboard returns data
===============  ===========================================================================
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field

from agentverify import _http
from agentverify.errors import ConfigError, ScenarioError
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
    """GET ``path`` on each replica directly; one line per replica that did not answer 200."""
    bad = []
    for r in replicas:
        try:
            resp = _http.client().get(r.url + path, timeout=5.0)
            if resp.status_code != 200:
                bad.append(f"{r.instance}: {resp.status_code} {resp.text[:120]}")
        except httpx.HTTPError as exc:
            bad.append(f"{r.instance}: {type(exc).__name__}: {exc}")
    return bad


@step("health", facts=("replicas", "healthy_replicas", "unhealthy_replicas"))
def health(ctx: ScenarioContext, params: StepParams) -> dict[str, Any]:
    """GET /health on every replica directly; each must answer 200."""
    replicas = ctx.stack.replicas
    bad = unhealthy(replicas, ctx.config.stack.agent.contract.health_path)
    for line in bad:
        ctx.say(f"  unhealthy {line}")
    return {"replicas": len(replicas), "healthy_replicas": len(replicas) - len(bad),
            "unhealthy_replicas": len(bad)}


class ChatParams(StepParams):
    message: str = Field("How do I reset my password?", min_length=1)


@step("chat", params=ChatParams,
      facts=("chat_status", "chat_sources", "chat_answer_chars", "chat_version"))
def chat(ctx: ScenarioContext, params: ChatParams) -> dict[str, Any]:
    """One question through the load balancer; the answer must cite retrieved sources."""
    resp = ctx.http.post("/chat", json={"message": params.message})
    facts: dict[str, Any] = {"chat_status": resp.status_code}
    if resp.status_code == 200:
        body = resp.json()
        facts.update(chat_sources=len(body.get("sources") or []),
                     chat_answer_chars=len(body.get("answer") or ""),
                     chat_version=body.get("version"))
        titles = ", ".join(s.get("title", "?") for s in body.get("sources") or [])
        ctx.say(f"  answered by {body.get('replica')} ({body.get('version')}), sources: {titles}")
    else:
        ctx.say(f"  /chat answered {resp.status_code}: {resp.text[:200]}")
    return facts


@step("cache_repeat", params=ChatParams,
      facts=("cache_repeat_cached", "cache_repeat_llm_requests", "cache_repeat_tokens"))
def cache_repeat(ctx: ScenarioContext, params: ChatParams) -> dict[str, Any]:
    """Ask, then ask again: the repeat must come from Redis with no new LLM request."""
    first = ctx.http.post("/chat", json={"message": params.message})
    if first.status_code != 200:
        raise ScenarioError(f"/chat answered {first.status_code}: {first.text[:200]}")
    before = ctx.ledger()
    again = ctx.http.post("/chat", json={"message": params.message})
    after = ctx.ledger()
    if again.status_code != 200:
        raise ScenarioError(f"repeated /chat answered {again.status_code}: {again.text[:200]}")
    tokens = sum(after.get(k, 0) - before.get(k, 0)
                 for k in ("prompt_tokens", "completion_tokens", "embedding_tokens"))
    return {"cache_repeat_cached": bool(again.json().get("cached")),
            "cache_repeat_llm_requests": after["requests"] - before["requests"],
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
    statuses: Counter[str] = Counter()
    replicas: set[str] = set()
    url = ctx.stack.lb_url + "/chat"
    t0 = time.monotonic()

    def one(i: int, client: httpx.Client) -> tuple[str, str | None]:
        try:
            resp = client.post(url, json={"message": prompts[i % len(prompts)]})
            return str(resp.status_code), resp.headers.get("x-agent-replica")
        except httpx.HTTPError as exc:
            return type(exc).__name__, None

    with httpx.Client(timeout=30.0) as client, \
            cf.ThreadPoolExecutor(max_workers=params.concurrency) as pool:
        for status, replica in pool.map(lambda i: one(i, client), range(params.requests)):
            statuses[status] += 1
            if replica is not None:
                replicas.add(replica)
    failed = sum(n for s, n in statuses.items() if s != "200")
    ctx.say(f"  {params.requests} requests in {time.monotonic() - t0:.1f}s, "
            f"statuses {dict(statuses)}, replicas seen {sorted(replicas)}")
    return {"traffic_requests": params.requests, "traffic_failed": failed,
            "traffic_error_ratio": failed / params.requests,
            "traffic_replicas_seen": len(replicas)}


class TargetsParams(StepParams):
    timeout_s: float = Field(30.0, gt=0)


@step("targets", params=TargetsParams, facts=("targets_expected", "targets_up", "targets_down"))
def targets(ctx: ScenarioContext, params: TargetsParams) -> dict[str, Any]:
    """Prometheus scrapes every replica of the agent, and every one is up."""
    expected = {"%s:%d" % r.handle.address("http") for r in ctx.stack.replicas}
    deadline = time.monotonic() + params.timeout_s
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


class DashboardParams(StepParams):
    path: str | None = None
    timeout_s: float = Field(30.0, gt=0)


@step("dashboard", params=DashboardParams,
      facts=("dashboard_panels", "dashboard_panels_with_data", "dashboard_panels_empty"))
def dashboard(ctx: ScenarioContext, params: DashboardParams) -> dict[str, Any]:
    """Every panel query of the Grafana dashboard returns a non-empty series."""
    from agentverify.monitoring.dashboard import (
        check_dashboard,
        dashboard_path,
        load_dashboard,
    )

    path = ctx.config.path(params.path) if params.path else dashboard_path()
    check = check_dashboard(load_dashboard(path), ctx.prometheus, timeout=params.timeout_s)
    for line in str(check).splitlines():
        ctx.say(f"  {line}")
    return {"dashboard_panels": check.panels_total,
            "dashboard_panels_with_data": check.panels_with_data,
            "dashboard_panels_empty": check.panels_total - check.panels_with_data}
