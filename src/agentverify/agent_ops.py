"""The operations an SRE does to a running agent fleet: rate limit, clear the cache,
switch to the backup LLM, change its configuration, rotate its logs.

The emergency runbooks and the rehearsal steps call exactly these. Each works on any
agent: through the agent's admin endpoints when its contract names them
(``stack.agent.contract.admin``; the reference agent has all three), else the way the
seed does it:

================  ===============================  ========================================
operation         admin endpoint (reference API)   without one
================  ===============================  ========================================
``rate_limit``    ``POST {enabled, requests_per_   ``rate_limit.*`` changed in the agent's
                  second, burst}``; every replica  config.yaml, replicas restarted one at a
                  must report it on ``GET``        time (drained in nginx)
``clear_cache``   ``POST`` -> ``{"deleted": n}``   the Redis keys matching
                                                   ``contract.cache_keys`` are deleted
                                                   (nothing else: rate-limit buckets stay)
``switch_llm``    ``POST {"use": "primary" |       ``model.model_name``, ``base_url`` and
                  "backup"}``; every replica must  ``api_key_env`` set to the backup's (or
                  report it on ``GET``             back to the primary's) in config.yaml,
                                                   and the model / base-URL / key
                                                   variables with them; rolling restart
================  ===============================  ========================================

:func:`reconfigure` is the seed's way itself, for any key of the agent's config.yaml (the
seed's ``update_model``: ``reconfigure(stack, {"model.model_name": "gpt-4o"})``).
:func:`rotate_logs` is the seed's ``rotate_logs``: every replica's request log rotated by
logrotate, then the contract's reopen signal sent to each replica (the ``postrotate``),
or copied and truncated for an agent that has no such signal (:mod:`agentverify.logrotate`).

Each returns an :class:`AgentOpResult`: what it did, how (``admin``, ``restart`` or
``redis``), how long it took, and the state before it (so a caller can put it back).
A restart that fails on a replica is put back on the previous configuration and the
operation raises :class:`~agentverify.errors.AgentOpError` naming the replica.

Example:
    >>> done = rate_limit(stack, requests_per_second=5, burst=5)       # doctest: +SKIP
    >>> done.method, round(done.seconds, 1), done.previous             # doctest: +SKIP
    ('restart', 9.8, {'enabled': False, 'requests_per_second': 10.0, 'burst': 20})
    >>> rate_limit(stack, **done.previous)                             # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from agentverify import _http
from agentverify.contract import AGENTVERIFY_KEY_PREFIX, AgentContract, quote
from agentverify.errors import AgentOpError

__all__ = ["AgentOpResult", "CacheEntry", "cache_entries", "cache_ttls", "clear_cache",
           "write_cache_entry", "current_llm", "current_rate_limit", "rate_limit",
           "reconfigure", "rotate_logs", "switch_llm"]

#: seconds every replica gets to report an admin change (the reference caches ~1 s)
SETTLE_TIMEOUT_S = 10.0
_RATE_KEYS = ("enabled", "requests_per_second", "burst")


@dataclass(frozen=True)
class AgentOpResult:
    """What one agent operation did.

    Attributes:
        operation: ``rate_limit``, ``clear_cache``, ``switch_llm``, ``reconfigure`` or
            ``rotate_logs``.
        method: ``admin`` (the agent's endpoint), ``restart`` (config.yaml changed and a
            rolling restart), ``redis`` (the cache keys deleted directly), ``logrotate``
            (``rename`` + the reopen signal) or ``copytruncate``; ``none`` when the fleet
            was already in the wanted state.
        detail: One line saying what was done.
        seconds: How long it took, until every replica follows it.
        previous: The state before, in the operation's own arguments (``rate_limit(
            stack, **previous)`` and ``switch_llm(stack, previous["use"])`` put it back).
        replicas_restarted: How many replicas a rolling restart replaced.
        deleted: Cache keys deleted (``clear_cache``).
    """

    operation: str
    method: str
    detail: str
    seconds: float
    previous: dict[str, Any] = field(default_factory=dict)
    replicas_restarted: int = 0
    deleted: int | None = None

    def line(self) -> str:
        return f"{self.operation} ({self.method}, {self.seconds:.2f}s): {self.detail}"


def _contract(stack: Any) -> AgentContract:
    return AgentContract.from_config(stack.config)


def _admin(stack: Any, method: str, path: str, body: Any = None) -> Any:
    """One admin call, straight to a replica (the next one if it cannot be reached): the
    settings are fleet-wide, and in an emergency the load balancer may be the part that
    fails (every replica ejected, a rate limit in the way)."""
    problems: list[str] = []
    for replica in stack.replicas:
        try:
            resp = _http.client().request(method, replica.url + path, json=body, timeout=10.0)
        except httpx.HTTPError as exc:
            problems.append(f"{replica.instance}: {type(exc).__name__}: {exc}")
            continue
        return _admin_answer(method, path, resp)
    raise AgentOpError(f"{method} {path}: no replica answered"
                       + (f" ({'; '.join(problems)})" if problems else " (none is running)"))


def _admin_answer(method: str, path: str, resp: httpx.Response) -> Any:
    if resp.status_code != 200:
        raise AgentOpError(f"{method} {path} answered {resp.status_code}: {quote(resp.text, 200)!r} "
                           f"(stack.agent.contract.admin; null if the agent has no such endpoint)")
    try:
        return resp.json()
    except ValueError:
        raise AgentOpError(f"{method} {path} answered a non-JSON body: "
                           f"{quote(resp.text, 200)!r}") from None


def _wait_replicas_report(stack: Any, path: str, want: dict[str, Any],
                          timeout: float) -> None:
    """Every replica reports ``want`` on ``GET path`` (each may cache its settings)."""
    deadline = time.monotonic() + timeout
    while True:
        seen: dict[str, Any] = {}
        for replica in stack.replicas:
            try:
                seen[replica.instance] = _http.client().get(replica.url + path,
                                                            timeout=5.0).json()
            except (httpx.HTTPError, ValueError) as exc:
                seen[replica.instance] = f"{type(exc).__name__}: {exc}"
        if all(isinstance(v, dict) and all(v.get(k) == w for k, w in want.items())
               for v in seen.values()):
            return
        if time.monotonic() > deadline:
            raise AgentOpError(f"{want} did not reach every replica within {timeout:g}s; "
                               f"replicas report {seen}")
        time.sleep(0.2)


def _reconfigure(stack: Any, operation: str, overrides: dict[str, Any],
                 detail: str) -> tuple[int, float]:
    """The agent's config.yaml changed by ``overrides`` and a rolling restart; on a
    replica that fails, the fleet goes back to the previous config and this raises."""
    from agentverify.config import with_overrides

    before = stack.agent_config
    changed = with_overrides(before, overrides, source=f"agent_ops.{operation}")
    t0 = time.monotonic()
    rollout = stack.reconfigure_agents(changed)
    if rollout.failure:
        back = stack.reconfigure_agents(before)
        restored = "put back" if back.completed else f"NOT put back: {back.failure}"
        raise AgentOpError(f"{operation}: {detail} failed on a rolling restart: "
                           f"{rollout.failure} (the previous configuration was {restored})")
    return len(rollout.steps), time.monotonic() - t0


def reconfigure(stack: Any, overrides: dict[str, Any], *,
                operation: str = "reconfigure") -> AgentOpResult:
    """Change keys of the agent's config.yaml (dotted, as ``--set`` takes them) and
    restart the replicas one at a time; ``previous`` holds the old values.

    Raises:
        ConfigError: a key or value is not valid config.
        AgentOpError: a replica did not restart on it (the fleet is put back).
    """
    t0 = time.monotonic()
    before = stack.agent_config.model_dump()
    previous: dict[str, Any] = {}
    for key in overrides:
        node: Any = before
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        previous[key] = node
    described = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
    restarted, _ = _reconfigure(stack, operation, dict(overrides), described)
    return AgentOpResult(operation, "restart",
                         f"{described} in config.yaml, {restarted} replica(s) restarted one "
                         f"at a time", time.monotonic() - t0, previous,
                         replicas_restarted=restarted)


# --------------------------------------------------------------------------- rate limit


def current_rate_limit(stack: Any) -> dict[str, Any]:
    """``{"enabled", "requests_per_second", "burst"}`` the fleet applies now."""
    path = _contract(stack).admin.rate_limit
    if path:
        state = _admin(stack, "GET", path)
        return {k: state[k] for k in _RATE_KEYS if k in state}
    section = stack.agent_config.rate_limit
    return {k: getattr(section, k) for k in _RATE_KEYS}


def rate_limit(stack: Any, *, requests_per_second: float, burst: int, enabled: bool = True,
               settle_timeout_s: float = SETTLE_TIMEOUT_S) -> AgentOpResult:
    """Set the per-client rate limit of the whole fleet (``enabled: false`` lifts it).

    Raises:
        AgentOpError: the admin endpoint failed, a replica did not follow, or a replica
            did not restart on the new configuration.
    """
    t0 = time.monotonic()
    want = {"enabled": enabled, "requests_per_second": float(requests_per_second),
            "burst": int(burst)}
    previous = current_rate_limit(stack)
    described = (f"{want['requests_per_second']:g}/s, burst {want['burst']}" if enabled
                 else "off")
    path = _contract(stack).admin.rate_limit
    if path:
        _admin(stack, "POST", path, want)
        _wait_replicas_report(stack, path, want, settle_timeout_s)
        return AgentOpResult("rate_limit", "admin", f"POST {path}: rate limit {described}",
                             time.monotonic() - t0, previous)
    if {k: previous.get(k) for k in _RATE_KEYS} == want:
        return AgentOpResult("rate_limit", "none", f"rate limit already {described}",
                             time.monotonic() - t0, previous)
    restarted, _ = _reconfigure(stack, "rate_limit",
                                {f"rate_limit.{k}": v for k, v in want.items()},
                                f"rate limit {described}")
    return AgentOpResult("rate_limit", "restart",
                         f"rate_limit {described} in config.yaml, {restarted} replica(s) "
                         f"restarted one at a time", time.monotonic() - t0, previous,
                         replicas_restarted=restarted)


# --------------------------------------------------------------------------- cache


def clear_cache(stack: Any) -> AgentOpResult:
    """Delete every cached answer of the fleet (and nothing else).

    Raises:
        AgentOpError: the admin endpoint failed, or Redis could not be reached.
    """
    t0 = time.monotonic()
    contract = _contract(stack)
    path = contract.admin.clear_cache
    if path:
        answer = _admin(stack, "POST", path)
        deleted = int(answer.get("deleted", 0)) if isinstance(answer, dict) else 0
        return AgentOpResult("clear_cache", "admin", f"POST {path}: {deleted} key(s) deleted",
                             time.monotonic() - t0, deleted=deleted)
    deleted = 0
    with _cache_redis(stack, "clear_cache") as client:
        for batch in _agent_key_batches(client, contract.cache_keys):
            deleted += int(client.unlink(*batch))
    return AgentOpResult("clear_cache", "redis",
                         f"{deleted} key(s) matching {', '.join(contract.cache_keys)} deleted",
                         time.monotonic() - t0, deleted=deleted)


def cache_ttls(stack: Any) -> dict[str, int]:
    """The TTL, in seconds, of every key of the agent's cache (``contract.cache_keys``);
    -1 for a key that never expires. agentverify's own keys (``agentverify:*``, e.g. a
    backup rehearsal's seeded data) are never among them, whatever the patterns.

    Raises:
        AgentOpError: Redis could not be reached.
    """
    ttls: dict[str, int] = {}
    with _cache_redis(stack, "cache_ttls") as client:
        for batch in _agent_key_batches(client, _contract(stack).cache_keys):
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.ttl(key)
            for key, ttl in zip(batch, pipe.execute(), strict=True):
                if int(ttl) != -2:  # -2: expired between the scan and now
                    ttls[key.decode("utf-8", "backslashreplace")] = int(ttl)
    return ttls


@dataclass(frozen=True)
class CacheEntry:
    """One key of the agent's cache: its TTL left (ms; -1: none) and its value (JSON
    decoded when it is JSON, else the raw bytes)."""

    key: str
    pttl_ms: int
    value: Any


def cache_entries(stack: Any) -> list[CacheEntry]:
    """Every key of the agent's cache (``contract.cache_keys``; never agentverify's own).

    Raises:
        AgentOpError: Redis could not be reached.
    """
    out: list[CacheEntry] = []
    with _cache_redis(stack, "cache_entries") as client:
        for batch in _agent_key_batches(client, _contract(stack).cache_keys):
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.get(key)
                pipe.pttl(key)
            replies = pipe.execute()
            for key, raw, pttl in zip(batch, replies[::2], replies[1::2], strict=True):
                if raw is None:
                    continue
                try:
                    value: Any = json.loads(raw)
                except ValueError:
                    value = raw
                out.append(CacheEntry(key.decode("utf-8", "backslashreplace"), int(pttl), value))
    return out


def write_cache_entry(stack: Any, key: str, value: Any) -> None:
    """Overwrite one cache key (JSON), keeping its TTL (the corruption drill's poison).

    Raises:
        AgentOpError: Redis could not be reached.
    """
    with _cache_redis(stack, "write_cache_entry") as client:
        client.set(key, json.dumps(value), keepttl=True)


@contextlib.contextmanager
def _cache_redis(stack: Any, operation: str) -> Iterator[Any]:
    """A client on the stack's Redis; its errors become one AgentOpError."""
    import redis

    from agentverify.backup import service_name

    url = str(stack.service(service_name(stack, "cache")).url()) + "/0"
    try:
        with redis.Redis.from_url(url) as client:
            yield client
    except redis.RedisError as exc:
        raise AgentOpError(f"{operation}: Redis at {url}: {exc}") from exc


def _agent_key_batches(client: Any, patterns: list[str], size: int = 500) -> Iterator[list[bytes]]:
    """The keys matching ``patterns`` (SCAN, never KEYS), each once, in batches;
    agentverify's own namespace is left out by construction."""
    seen: set[bytes] = set()
    batch: list[bytes] = []
    own = AGENTVERIFY_KEY_PREFIX.encode()
    for pattern in patterns:
        for key in client.scan_iter(match=pattern, count=1000):
            if key.startswith(own) or key in seen:
                continue
            seen.add(key)
            batch.append(key)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------- LLM


def current_llm(stack: Any) -> str:
    """``primary`` or ``backup``: which LLM API the fleet uses now."""
    path = _contract(stack).admin.switch_llm
    if path:
        return str(_admin(stack, "GET", path).get("use", "primary"))
    model, backup = stack.agent_config.model, stack.config.model.backup
    on_backup = (model.model_name, model.api_key_env, model.base_url) == (
        backup.model_name, backup.api_key_env, backup.base_url)
    return "backup" if on_backup and model != stack.config.model else "primary"


def switch_llm(stack: Any, use: Literal["primary", "backup"], *,
               settle_timeout_s: float = SETTLE_TIMEOUT_S) -> AgentOpResult:
    """Make every replica use the primary or the backup LLM API (``model.backup``).

    Raises:
        AgentOpError: ``use`` is neither, the admin endpoint failed, a replica did not
            follow, or a replica did not restart on the new configuration.
    """
    if use not in ("primary", "backup"):
        raise AgentOpError(f"switch_llm: expected primary or backup, got {use!r}")
    t0 = time.monotonic()
    previous = {"use": current_llm(stack)}
    path = _contract(stack).admin.switch_llm
    if path:
        _admin(stack, "POST", path, {"use": use})
        _wait_replicas_report(stack, path, {"use": use}, settle_timeout_s)
        return AgentOpResult("switch_llm", "admin", f"POST {path}: now on the {use} LLM API",
                             time.monotonic() - t0, previous)
    if previous["use"] == use:
        return AgentOpResult("switch_llm", "none", f"already on the {use} LLM API",
                             time.monotonic() - t0, previous)
    baseline = stack.config.model
    target = baseline.backup if use == "backup" else baseline
    overrides = {"model.model_name": target.model_name, "model.provider": target.provider,
                 "model.base_url": target.base_url, "model.api_key_env": target.api_key_env}
    restarted, _ = _reconfigure(stack, "switch_llm", overrides, f"switch to {use}")
    return AgentOpResult("switch_llm", "restart",
                         f"model.model_name {target.model_name} (the {use}) in config.yaml, "
                         f"{restarted} replica(s) restarted one at a time",
                         time.monotonic() - t0, previous, replicas_restarted=restarted)


# --------------------------------------------------------------------------- logs


def rotate_logs(stack: Any) -> AgentOpResult:
    """Rotate every replica's request log now (the seed's ``rotate_logs``).

    With ``stack.agent.contract.logs.reopen_signal`` each file is renamed (``NAME.1``)
    and every replica is sent the signal to reopen it; without one each file is copied
    and truncated in place. ``previous`` holds nothing (there is nothing to put back).

    Raises:
        AgentOpError: the agent is given no log file, a replica has written none,
            logrotate failed, or a replica could not be signalled.
    """
    import signal

    from agentverify import logrotate
    from agentverify.errors import StackError

    t0 = time.monotonic()
    reopen = _contract(stack).section.logs.reopen_signal
    try:
        files = {r.instance: stack.agent_log(r.instance) for r in stack.replicas}
    except StackError as exc:
        raise AgentOpError(f"rotate_logs: {exc}") from None
    silent = [f"{name} ({path})" for name, path in files.items() if not path.is_file()]
    if silent:
        raise AgentOpError(f"rotate_logs: no request log written by {', '.join(silent)}: "
                           "the agent must write it where stack.agent.variables.log_file "
                           "tells it to (or set it to null if it keeps no log)")
    workdir = stack.run.run_dir / "logrotate"
    mode: logrotate.Mode = "rename" if reopen else "copytruncate"
    logrotate.rotate(list(files.values()), mode=mode, workdir=workdir)
    if reopen:
        for name in files:  # the postrotate: through the Stack, on every backend
            try:
                stack.signal(name, signal.Signals[reopen])
            except StackError as exc:
                raise AgentOpError(f"rotate_logs: {exc}") from None
    how = f"renamed, {reopen} sent to each replica" if reopen else "copied and truncated"
    return AgentOpResult("rotate_logs", "logrotate" if reopen else "copytruncate",
                         f"{len(files)} request log(s) rotated by logrotate ({how})",
                         time.monotonic() - t0)
