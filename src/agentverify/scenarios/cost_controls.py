"""The agent's cost controls, checked through the load balancer: token cap and rate limit.

==============  ===========================================================================
``max_tokens``  fresh questions: no completion is longer than ``model.max_tokens``, and
                the usage the agent reports is what the LLM ledger billed
``rate_limit``  sets a per-client limit on the fleet (``POST /admin/rate-limit``, shared
                through Redis), bursts one client through the load balancer: beyond the
                rate it answers 429 with ``Retry-After``, another client is not limited;
                the previous setting is restored afterwards
==============  ===========================================================================

Both send plain HTTP requests from this process (no Locust): they measure a control,
not throughput. The Locust steps (``load``, ``cache_cost``) are in
:mod:`agentverify.load.steps`.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field

from agentverify.cost import LedgerDelta, settled_ledger
from agentverify.errors import ScenarioError
from agentverify.scenarios.registry import StepParams, step
from agentverify.scenarios.smoke import load_prompts

if TYPE_CHECKING:
    from agentverify.scenarios.runner import ScenarioContext

__all__: list[str] = []


# --------------------------------------------------------------------------- max_tokens


class MaxTokensParams(StepParams):
    """How many fresh (never cached) questions to ask, and how many at once."""

    requests: int = Field(12, ge=1, le=10_000)
    concurrency: int = Field(4, ge=1, le=256)


@step("max_tokens", params=MaxTokensParams,
      facts=("max_tokens_limit", "max_tokens_requests", "max_tokens_longest",
             "max_tokens_over_limit", "max_tokens_at_limit", "max_tokens_usage_matches_ledger"))
def max_tokens(ctx: ScenarioContext, params: MaxTokensParams) -> dict[str, Any]:
    """Fresh questions: no completion exceeds ``model.max_tokens``; usage is what was billed."""
    limit = ctx.config.model.max_tokens
    prompts = load_prompts(ctx.config.path(ctx.config.load.prompts))
    tag = uuid.uuid4().hex[:8]
    messages = [f"{prompts[i % len(prompts)]} (max-tokens check {tag}-{i})"
                for i in range(params.requests)]
    url = ctx.stack.lb_url + "/chat"
    before = ctx.ledger()

    def ask(message: str, client: httpx.Client) -> tuple[int, int | None, bool]:
        resp = client.post(url, json={"message": message})
        if resp.status_code != 200:
            return resp.status_code, None, False
        body = resp.json()
        return 200, int((body.get("usage") or {}).get("completion_tokens", 0)), \
            bool(body.get("cached"))

    with httpx.Client(timeout=30.0) as client, \
            cf.ThreadPoolExecutor(max_workers=params.concurrency) as pool:
        try:
            answers = list(pool.map(lambda m: ask(m, client), messages))
        except httpx.HTTPError as exc:
            raise ScenarioError(f"max_tokens: /chat through {url}: {exc}") from exc
    failed = [status for status, _, _ in answers if status != 200]
    if failed:
        raise ScenarioError(f"max_tokens: {len(failed)} of {len(answers)} questions failed "
                            f"(statuses {sorted(set(failed))})")
    completions = [tokens for _, tokens, cached in answers if tokens is not None and not cached]
    delta = LedgerDelta.between(before, settled_ledger(ctx.ledger))
    billed = delta.total("completion_tokens")
    longest = max(completions, default=0)
    ctx.say(f"  {len(completions)} fresh completions, longest {longest} tokens "
            f"(max_tokens {limit}); usage {sum(completions):,} vs ledger {billed:,} "
            f"completion tokens")
    return {
        "max_tokens_limit": limit, "max_tokens_requests": len(answers),
        "max_tokens_longest": longest,
        "max_tokens_over_limit": sum(1 for t in completions if t > limit),
        "max_tokens_at_limit": sum(1 for t in completions if t == limit),
        "max_tokens_usage_matches_ledger": billed == sum(completions),
    }


# --------------------------------------------------------------------------- rate_limit


class RateLimitParams(StepParams):
    """The limit to set on the fleet, and the burst one client sends through nginx."""

    requests_per_second: float = Field(5.0, gt=0)
    burst: int = Field(5, ge=1)
    requests: int = Field(40, ge=1, le=10_000)
    concurrency: int = Field(8, ge=1, le=256)
    message: str = Field("How do I reset my password?", min_length=1)
    settle_timeout_s: float = Field(10.0, gt=0)


def _wait_replicas_see(ctx: ScenarioContext, want: dict[str, Any], timeout: float) -> None:
    """Every replica reports ``want`` from ``GET /admin/rate-limit`` (each caches ~1 s)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    while True:
        seen = {}
        for replica in ctx.stack.replicas:
            try:
                seen[replica.instance] = httpx.get(replica.url + "/admin/rate-limit",
                                                   timeout=5.0).json()
            except (httpx.HTTPError, ValueError) as exc:
                seen[replica.instance] = f"{type(exc).__name__}: {exc}"
        if all(isinstance(v, dict) and all(v.get(k) == w for k, w in want.items())
               for v in seen.values()):
            return
        if time.monotonic() > deadline:
            raise ScenarioError(f"rate limit {want} did not reach every replica within "
                                f"{timeout:g}s; replicas report {seen}")
        time.sleep(0.2)


@step("rate_limit", params=RateLimitParams,
      facts=("rate_limit_requests", "rate_limit_allowed", "rate_limit_429",
             "rate_limit_allowed_max", "rate_limit_excess", "rate_limit_retry_after",
             "rate_limit_other_client_status", "rate_limit_other_errors",
             "rate_limit_replicas_seen"))
def rate_limit(ctx: ScenarioContext, params: RateLimitParams) -> dict[str, Any]:
    """A per-client limit set on one replica holds fleet-wide: 429 beyond the rate."""
    http = ctx.http
    try:
        previous = http.get("/admin/rate-limit").json()
        want = {"enabled": True, "requests_per_second": params.requests_per_second,
                "burst": params.burst}
        resp = http.post("/admin/rate-limit", json=want)
    except (httpx.HTTPError, ValueError) as exc:
        raise ScenarioError(f"rate_limit: /admin/rate-limit on {ctx.stack.lb_url}: {exc}") \
            from exc
    if resp.status_code != 200:
        raise ScenarioError(f"rate_limit: POST /admin/rate-limit answered {resp.status_code}: "
                            f"{resp.text[:200]}")
    restore = {k: previous[k] for k in ("enabled", "requests_per_second", "burst")
               if k in previous}

    def put_back() -> None:
        httpx.post(ctx.stack.lb_url + "/admin/rate-limit", json=restore, timeout=10.0)
        _wait_replicas_see(ctx, restore, params.settle_timeout_s)

    ctx.defer("restore the rate limit", put_back)
    _wait_replicas_see(ctx, want, params.settle_timeout_s)
    # answered once first, so the burst costs no LLM call
    http.post("/chat", json={"message": params.message},
              headers={"X-Client-Id": f"av-ratelimit-warm-{uuid.uuid4().hex[:8]}"})

    client_id = f"av-ratelimit-{uuid.uuid4().hex[:8]}"
    url = ctx.stack.lb_url + "/chat"

    def one(client: httpx.Client) -> tuple[int, str | None, str | None]:
        try:
            r = client.post(url, json={"message": params.message},
                            headers={"X-Client-Id": client_id})
        except httpx.HTTPError as exc:
            return 0, None, type(exc).__name__
        return r.status_code, r.headers.get("retry-after"), r.headers.get("x-agent-replica")

    with httpx.Client(timeout=30.0) as client, \
            cf.ThreadPoolExecutor(max_workers=params.concurrency) as pool:
        t0 = time.monotonic()
        answers = list(pool.map(lambda _: one(client), range(params.requests)))
        elapsed = time.monotonic() - t0
        other = client.post(url, json={"message": params.message},
                            headers={"X-Client-Id": f"av-ratelimit-other-{uuid.uuid4().hex[:8]}"})
    allowed = sum(1 for s, _, _ in answers if s == 200)
    limited = [(s, ra) for s, ra, _ in answers if s == 429]
    # a full bucket, refilled at the rate for as long as the burst lasted (+1: a token
    # that came back while the last requests were in flight)
    allowed_max = int(params.burst + params.requests_per_second * elapsed) + 1
    replicas = {rep for _, _, rep in answers if rep}
    ctx.say(f"  {params.requests} requests from one client in {elapsed:.2f}s through "
            f"{len(replicas)} replicas: {allowed} answered, {len(limited)} got 429 "
            f"(at most {allowed_max} may pass at {params.requests_per_second:g}/s, burst "
            f"{params.burst}); another client got {other.status_code}")
    return {
        "rate_limit_requests": params.requests,
        "rate_limit_allowed": allowed,
        "rate_limit_429": len(limited),
        "rate_limit_allowed_max": allowed_max,
        "rate_limit_excess": max(0, allowed - allowed_max),
        "rate_limit_retry_after": bool(limited) and all(ra for _, ra in limited),
        "rate_limit_other_client_status": other.status_code,
        "rate_limit_other_errors": sum(1 for s, _, _ in answers if s not in (200, 429)),
        "rate_limit_replicas_seen": len(replicas),
    }
