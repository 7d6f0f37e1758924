"""The agent's cost controls: token cap, rate limit and cache hygiene.

=================  ========================================================================
``max_tokens``     fresh questions: no completion the LLM ledger billed for them is longer
                   than ``model.max_tokens``, and the usage the agent's replies report
                   (when its contract maps ``completion_tokens``) is what the ledger billed
``rate_limit``     sets a per-client limit on the fleet (:func:`agentverify.agent_ops.rate_limit`:
                   the admin endpoint, or config.yaml and a rolling restart), bursts one
                   client (the contract's ``client_id_header``) through the load balancer:
                   beyond the rate it answers 429 with ``Retry-After``, another client is
                   not limited; the previous setting is restored afterwards
``cache_hygiene``  every key of the agent's cache in Redis (``contract.cache_keys``) has a
                   TTL no longer than ``cache.ttl``: an agent that caches without one fills
                   Redis until it evicts or dies
=================  ========================================================================

The first two send plain HTTP requests from this process (no Locust), through the
agent's contract: they measure a control, not throughput. The Locust steps (``load``,
``cache_cost``) are in :mod:`agentverify.load.steps`; ``load`` also counts the chat calls
that asked for no completion limit (``calls_without_max_tokens``).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field

from agentverify import _http, agent_ops
from agentverify.contract import AgentReply
from agentverify.cost import LedgerDelta, settled_ledger
from agentverify.errors import ScenarioError, StackError
from agentverify.gates import Inconclusive
from agentverify.scenarios.registry import StepParams, step
from agentverify.scenarios.smoke import load_prompts

if TYPE_CHECKING:
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["ledger_calls"]


def ledger_calls(ctx: ScenarioContext, since: int, limit: int | None = None) -> dict[str, Any]:
    """The LLM stub's call log above ``since`` (``{"calls", "last_seq", "dropped"}``)."""
    url = ctx.llm_url() + "/ledger/calls"
    params = {"since": since} if limit is None else {"since": since, "limit": limit}
    try:
        resp = _http.client().get(url, params=params, timeout=10.0)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        raise StackError(f"LLM call log at {url}: {exc}") from exc
    return resp.json()


# --------------------------------------------------------------------------- max_tokens


class MaxTokensParams(StepParams):
    """How many fresh (never cached) questions to ask, and how many at once."""

    requests: int = Field(12, ge=1, le=10_000)
    concurrency: int = Field(4, ge=1, le=256)


@step("max_tokens", params=MaxTokensParams,
      facts=("max_tokens_limit", "max_tokens_requests", "max_tokens_longest",
             "max_tokens_over_limit", "max_tokens_at_limit", "max_tokens_usage_matches_ledger"))
def max_tokens(ctx: ScenarioContext, params: MaxTokensParams) -> dict[str, Any]:
    """Fresh questions: no completion exceeds ``model.max_tokens``; usage is what was billed.

    The completions are the LLM ledger's (its call log), so the cap is checked for any
    agent; the usage in the replies can be compared only where the contract maps it.
    """
    limit = ctx.config.model.max_tokens
    prompts = load_prompts(ctx.config.path(ctx.config.load.prompts))
    tag = uuid.uuid4().hex[:8]
    messages = [f"{prompts[i % len(prompts)]} (max-tokens check {tag}-{i})"
                for i in range(params.requests)]
    before = ctx.ledger()
    since = ledger_calls(ctx, 0, limit=1)["last_seq"]  # only the cursor

    def ask(message: str, client: httpx.Client) -> AgentReply:
        return ctx.contract.ask(client, message, base_url=ctx.stack.lb_url)

    with _http.new_client(timeout=30.0) as client, \
            cf.ThreadPoolExecutor(max_workers=params.concurrency) as pool:
        try:
            answers = list(pool.map(lambda m: ask(m, client), messages))
        except httpx.HTTPError as exc:
            raise ScenarioError(f"max_tokens: chat through {ctx.stack.lb_url}: {exc}") from exc
    failed = [a.status for a in answers if not a.ok]
    if failed:
        raise ScenarioError(f"max_tokens: {len(failed)} of {len(answers)} questions failed "
                            f"(statuses {sorted(set(failed))})")
    delta = LedgerDelta.between(before, settled_ledger(ctx.ledger))
    log = ledger_calls(ctx, since)
    billed = [int(c.get("completion_tokens") or 0) for c in log["calls"]
              if c.get("endpoint") == "chat" and c.get("status") == 200]
    longest = max(billed, default=0)
    if ctx.contract.maps("completion_tokens"):
        reported = sum(a.completion_tokens or 0 for a in answers if a.cached is not True)
        matches: Any = reported == delta.total("completion_tokens")
        usage = f"; usage in the replies {reported:,} vs ledger {delta.total('completion_tokens'):,}"
    else:
        matches = Inconclusive("stack.agent.contract.reply.completion_tokens is null: the "
                               "reply does not report its usage")
        usage = ""
    ctx.say(f"  {len(billed)} fresh completions billed, longest {longest} tokens "
            f"(max_tokens {limit}){usage}")
    return {
        "max_tokens_limit": limit, "max_tokens_requests": len(answers),
        "max_tokens_longest": longest,
        "max_tokens_over_limit": sum(1 for t in billed if t > limit),
        "max_tokens_at_limit": sum(1 for t in billed if t == limit),
        "max_tokens_usage_matches_ledger": matches,
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


def burst_from_one_client(ctx: ScenarioContext, message: str, *, requests: int,
                          concurrency: int) -> tuple[list[tuple[int, str | None, str | None]],
                                                     float]:
    """``requests`` asks of ``message`` from one client of its own through the load
    balancer, ``concurrency`` at a time: ``(status, Retry-After, replica)`` of each
    (status 0: no answer), and the seconds they took."""
    contract = ctx.contract
    client_id = f"av-ratelimit-{uuid.uuid4().hex[:8]}"
    url = ctx.stack.lb_url

    def one(client: httpx.Client) -> tuple[int, str | None, str | None]:
        try:
            r = contract.send(client, message, base_url=url, client_id=client_id)
        except httpx.HTTPError as exc:
            return 0, None, type(exc).__name__
        _, replica = contract.identity(r.headers, r.text)
        return r.status_code, r.headers.get("retry-after"), replica

    with _http.new_client(timeout=30.0) as client, \
            cf.ThreadPoolExecutor(max_workers=concurrency) as pool:
        t0 = time.monotonic()
        answers = list(pool.map(lambda _: one(client), range(requests)))
        return answers, time.monotonic() - t0


@step("rate_limit", params=RateLimitParams,
      facts=("rate_limit_requests", "rate_limit_allowed", "rate_limit_429",
             "rate_limit_allowed_max", "rate_limit_excess", "rate_limit_retry_after",
             "rate_limit_other_client_status", "rate_limit_other_errors",
             "rate_limit_replicas_seen", "rate_limit_set_seconds"))
def rate_limit(ctx: ScenarioContext, params: RateLimitParams) -> dict[str, Any]:
    """A per-client limit set on the fleet holds fleet-wide: 429 beyond the rate."""
    done = agent_ops.rate_limit(ctx.stack, requests_per_second=params.requests_per_second,
                                burst=params.burst, settle_timeout_s=params.settle_timeout_s)
    ctx.say(f"  {done.line()}")
    previous = done.previous

    def put_back() -> None:
        agent_ops.rate_limit(ctx.stack, requests_per_second=previous["requests_per_second"],
                             burst=previous["burst"], enabled=previous["enabled"],
                             settle_timeout_s=params.settle_timeout_s)

    ctx.defer("restore the rate limit", put_back)
    contract = ctx.contract
    # answered once first, so the burst costs no LLM call
    ctx.ask(params.message, client_id=f"av-ratelimit-warm-{uuid.uuid4().hex[:8]}")
    answers, elapsed = burst_from_one_client(ctx, params.message, requests=params.requests,
                                             concurrency=params.concurrency)
    try:
        other = ctx.ask(params.message, client_id=f"av-ratelimit-other-{uuid.uuid4().hex[:8]}")
    except httpx.HTTPError as exc:
        raise ScenarioError(f"rate_limit: another client's request failed: {exc}") from exc
    allowed = sum(1 for s, _, _ in answers if s == 200)
    limited = [(s, ra) for s, ra, _ in answers if s == 429]
    # a full bucket, refilled at the rate for as long as the burst lasted (+1: a token
    # that came back while the last requests were in flight)
    allowed_max = int(params.burst + params.requests_per_second * elapsed) + 1
    replicas = {rep for _, _, rep in answers if rep}
    ctx.say(f"  {params.requests} requests from one client in {elapsed:.2f}s through "
            f"{len(replicas)} replicas: {allowed} answered, {len(limited)} got 429 "
            f"(at most {allowed_max} may pass at {params.requests_per_second:g}/s, burst "
            f"{params.burst}); another client got {other.status}")
    return {
        "rate_limit_requests": params.requests,
        "rate_limit_allowed": allowed,
        "rate_limit_429": len(limited),
        "rate_limit_allowed_max": allowed_max,
        "rate_limit_excess": max(0, allowed - allowed_max),
        "rate_limit_retry_after": bool(limited) and all(ra for _, ra in limited),
        "rate_limit_other_client_status": other.status,
        "rate_limit_other_errors": sum(1 for s, _, _ in answers if s not in (200, 429)),
        "rate_limit_replicas_seen": (len(replicas) if contract.maps("replica") else
                                     Inconclusive("stack.agent.contract.reply.replica is "
                                                  "null: the reply does not say which "
                                                  "replica answered")),
        "rate_limit_set_seconds": round(done.seconds, 3),
    }


# --------------------------------------------------------------------------- cache_hygiene


@step("cache_hygiene", facts=("cache_keys_checked", "keys_without_ttl", "keys_over_ttl",
                              "max_ttl_s", "cache_ttl_s"))
def cache_hygiene(ctx: ScenarioContext, params: StepParams) -> dict[str, Any]:
    """Every key the agent cached in Redis expires, and within ``cache.ttl``.

    The keys are those matching ``stack.agent.contract.cache_keys``, read from the live
    Redis: what the run wrote that is still there (a key with a TTL may have expired; one
    without is there for good). agentverify's own keys are never counted.
    """
    limit = ctx.config.cache.ttl
    ttls = agent_ops.cache_ttls(ctx.stack)
    patterns = ", ".join(ctx.contract.cache_keys)
    if not ttls:
        why = Inconclusive(f"no Redis key matches stack.agent.contract.cache_keys "
                           f"({patterns}): nothing cached, or the patterns are not the agent's")
        return {"cache_keys_checked": 0, "keys_without_ttl": why, "keys_over_ttl": why,
                "max_ttl_s": why, "cache_ttl_s": limit}
    never = [k for k, t in ttls.items() if t < 0]
    over = [k for k, t in ttls.items() if t > limit]
    longest = max((t for t in ttls.values() if t >= 0), default=None)
    ctx.say(f"  {len(ttls)} cached key(s) matching {patterns}: {len(never)} without a TTL "
            f"(never expire), {len(over)} with a TTL over cache.ttl {limit}s, "
            + (f"longest TTL {longest}s" if longest is not None else "none has a TTL")
            + (f"; e.g. {never[0]}" if never else ""))
    return {"cache_keys_checked": len(ttls), "keys_without_ttl": len(never),
            "keys_over_ttl": len(over), "max_ttl_s": longest, "cache_ttl_s": limit}
