"""The agent's own operations a runbook needs: rate limit, answer cache, LLM switch.

STAND-IN FOR THE AGENT CONTRACT: these are thin functions over the *reference agent's*
admin API (``GET|POST /admin/rate-limit``, ``POST /admin/cache/clear``,
``GET|POST /admin/llm``, see :mod:`agentverify.reference_agent.app`) and its answer-cache
format in Redis. The agent contract's module of agent operations (with fallbacks for
agents without an admin API) replaces this module: every runbook operation and drill
check calls the agent only through the functions below, so pointing them at the
contract is the whole change.

Each change is verified, not assumed: after a POST to one replica, every replica is
asked until each reports the new value (replicas cache fleet-wide settings for about a
second).

Example:
    >>> previous = set_rate_limit(stack, enabled=True, requests_per_second=5, burst=10)
    ...                                                                 # doctest: +SKIP
    >>> switch_llm(stack, "backup")                                     # doctest: +SKIP
    {'use': 'backup', 'model': 'gpt-3.5-turbo', 'base_url': 'http://...'}
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx

from agentverify import _http
from agentverify.errors import ScenarioError

__all__ = ["ANSWER_PREFIX", "active_llm", "cached_answers", "clear_cache", "poison_cache",
           "rate_limit", "set_rate_limit", "switch_llm"]

#: where the reference agent caches answers in Redis (its cache.py)
ANSWER_PREFIX = "agent:answer:"
SETTLE_TIMEOUT_S = 10.0


def _admin(stack: Any, method: str, path: str, body: Any = None) -> Any:
    """One admin call, straight to a replica (the next one if it does not answer).

    Not through nginx: while the LLM fails, every replica answers chats with 502, nginx
    counts each as a failed upstream and holds the whole fleet out of rotation for its
    fail_timeout ("no live upstreams") -- an admin call through it would fail exactly
    when the runbook needs it. The setting is fleet-wide (in Redis) either way.
    """
    replicas = stack.replicas
    if not replicas:
        raise ScenarioError(f"{method} {path}: no agent replica is running")
    problems = []
    for replica in replicas:
        url = replica.url + path
        try:
            resp = _http.client().request(method, url, json=body, timeout=10.0)
        except httpx.HTTPError as exc:
            problems.append(f"{replica.instance}: {type(exc).__name__}: {exc}")
            continue
        if resp.status_code != 200:
            raise ScenarioError(f"{method} {path} on {replica.instance} answered "
                                f"{resp.status_code}: {resp.text[:200]}")
        try:
            return resp.json()
        except ValueError as exc:
            raise ScenarioError(f"{method} {path} on {replica.instance}: not JSON: "
                                f"{resp.text[:200]!r}") from exc
    raise ScenarioError(f"{method} {path}: no replica answered: {'; '.join(problems)}")


def _every_replica(stack: Any, path: str, ok: Callable[[Any], bool], what: str,
                   timeout: float = SETTLE_TIMEOUT_S) -> None:
    """Wait until every replica's ``GET path`` satisfies ``ok``."""
    deadline = time.monotonic() + timeout
    while True:
        seen: dict[str, Any] = {}
        for replica in stack.replicas:
            try:
                seen[replica.instance] = _http.client().get(replica.url + path,
                                                            timeout=5.0).json()
            except (httpx.HTTPError, ValueError) as exc:
                seen[replica.instance] = f"{type(exc).__name__}: {exc}"
        if seen and all(ok(v) for v in seen.values()):
            return
        if time.monotonic() > deadline:
            raise ScenarioError(f"{what} did not reach every replica within {timeout:g}s; "
                                f"replicas report {seen}")
        time.sleep(0.2)


def rate_limit(stack: Any) -> dict[str, Any]:
    """The fleet's rate-limit settings: ``{"enabled", "requests_per_second", "burst"}``."""
    current = _admin(stack, "GET", "/admin/rate-limit")
    return {k: current[k] for k in ("enabled", "requests_per_second", "burst") if k in current}


def set_rate_limit(stack: Any, *, enabled: bool, requests_per_second: float | None = None,
                   burst: int | None = None) -> dict[str, Any]:
    """Set the fleet-wide per-client rate limit; returns the settings it replaced."""
    previous = rate_limit(stack)
    want: dict[str, Any] = {"enabled": enabled}
    if requests_per_second is not None:
        want["requests_per_second"] = requests_per_second
    if burst is not None:
        want["burst"] = burst
    _admin(stack, "POST", "/admin/rate-limit", want)
    _every_replica(stack, "/admin/rate-limit",
                   lambda v: isinstance(v, dict) and all(v.get(k) == w for k, w in want.items()),
                   f"rate limit {want}")
    return previous


def clear_cache(stack: Any) -> int:
    """Delete every cached answer; the number of entries deleted."""
    return int(_admin(stack, "POST", "/admin/cache/clear").get("deleted", 0))


def active_llm(stack: Any) -> dict[str, str]:
    """Which LLM API the fleet uses: ``{"use": primary|backup, "model", "base_url"}``."""
    return dict(_admin(stack, "GET", "/admin/llm"))


def switch_llm(stack: Any, use: str) -> dict[str, str]:
    """Make every replica use the ``primary`` or the ``backup`` LLM API (verified on each)."""
    state = _admin(stack, "POST", "/admin/llm", {"use": use})
    _every_replica(stack, "/admin/llm", lambda v: isinstance(v, dict) and v.get("use") == use,
                   f"LLM switch to {use}")
    return dict(state)


# ------------------------------------------------------------------------------ cache


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=5.0)


def cached_answers(redis_url: str) -> list[dict[str, Any]]:
    """Every cached answer: ``{"key", "model", "sources", "pttl_ms"}`` (the TTL left: with
    ``cache.ttl`` it dates the entry)."""
    import redis

    out = []
    try:
        with _redis(redis_url) as client:
            for key in client.scan_iter(match=ANSWER_PREFIX + "*", count=500):
                raw, pttl = client.get(key), client.pttl(key)
                try:
                    value = json.loads(raw) if raw is not None else None
                except ValueError:
                    value = None
                out.append({"key": key.decode(), "pttl_ms": pttl,
                            "model": value.get("model") if isinstance(value, dict) else None,
                            "sources": [s.get("source") for s in value.get("sources") or []]
                            if isinstance(value, dict) else []})
    except redis.RedisError as exc:
        raise ScenarioError(f"reading the answer cache at {redis_url}: {exc}") from exc
    return out


def poison_cache(redis_url: str, *, fraction: float, wrong_source: str,
                 rng: Any) -> int:
    """Overwrite ``fraction`` of the cached answers with ones citing ``wrong_source``
    (the TTL kept): a corrupted cache keeps answering, from the wrong document."""
    import redis

    poisoned = 0
    try:
        with _redis(redis_url) as client:
            keys = sorted(client.scan_iter(match=ANSWER_PREFIX + "*", count=500))
            for key in keys:
                if rng.random() >= fraction:
                    continue
                raw = client.get(key)
                try:
                    value = json.loads(raw) if raw is not None else None
                except ValueError:
                    value = None
                if not isinstance(value, dict):
                    continue
                value["answer"] = "(corrupted) " + str(value.get("answer", ""))[:80]
                value["sources"] = [{"id": -1, "title": wrong_source, "source": wrong_source,
                                     "score": 0.0}]
                client.set(key, json.dumps(value), keepttl=True)
                poisoned += 1
    except redis.RedisError as exc:
        raise ScenarioError(f"poisoning the answer cache at {redis_url}: {exc}") from exc
    return poisoned
