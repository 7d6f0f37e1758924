"""The stack's fault proxy on every backend: each toxic has the effect it promises on the
edges the agents really use, measured from an agent replica's own place (its process on
the local backend, its container on docker) through its route to the real Redis, Milvus
and LLM stub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Runs in the agent's place: raw RESP against the Redis route, one measurement per mode.
REDIS_PROBE = r"""
import json, socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
def cmd(*parts):
    body = b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
    return b"*%d\r\n" % len(parts) + body
try:
    t0 = time.perf_counter()
    s = socket.create_connection((host, port), timeout=5)
    if mode == "ping":
        lat = []
        for _ in range(5):
            t = time.perf_counter(); s.sendall(cmd(b"PING")); s.recv(64)
            lat.append(time.perf_counter() - t)
        out["ping_s"] = sorted(lat)[2]
    elif mode == "get_big":
        s.sendall(cmd(b"GET", b"av:big")); got = 0; t = time.perf_counter()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += len(chunk)
            if got >= 200_000 + 11:
                break
        out["bytes"] = got; out["seconds"] = time.perf_counter() - t
    elif mode == "silent":
        s.sendall(cmd(b"PING")); t = time.perf_counter()
        s.settimeout(5)
        data = s.recv(64)
        out["data"] = data.decode(); out["closed_after_s"] = time.perf_counter() - t
except Exception as exc:
    out["error"] = type(exc).__name__
print(json.dumps(out))
"""

LLM_PROBE = r"""
import json, sys, time, httpx
url = sys.argv[1]
lat = []
for _ in range(3):
    t = time.perf_counter(); httpx.get(url + "/health", timeout=10); lat.append(time.perf_counter() - t)
print(json.dumps({"health_s": sorted(lat)[1]}))
"""

MILVUS_PROBE = r"""
import json, sys, time
from pymilvus import MilvusClient
client = MilvusClient(uri=sys.argv[1], timeout=10)
lat = []
for _ in range(3):
    t = time.perf_counter(); client.list_collections(); lat.append(time.perf_counter() - t)
print(json.dumps({"list_s": sorted(lat)[1]}))
"""


def _in_agent(stack: Any, script: str, *args: str) -> dict[str, Any]:
    handle = stack.replicas[0].handle
    res = stack.backend.exec(handle, ["${python}", "-c", script, *args], timeout=60)
    assert res.ok, res.output[-2000:]
    return json.loads(res.output.strip().splitlines()[-1])


@contextmanager
def toxic(stack: Any, proxy: str, kind: str, **attributes: int) -> Iterator[None]:
    client = stack.faults.client
    client.add_toxic(proxy, kind, name="route-test", attributes=attributes)
    try:
        yield
    finally:
        client.remove_toxic(proxy, "route-test")


@contextmanager
def down(stack: Any, proxy: str) -> Iterator[None]:
    stack.faults.client.disable(proxy)
    try:
        yield
    finally:
        stack.faults.client.enable(proxy)


def test_every_toxic_changes_what_an_agent_sees_of_its_dependencies(stack: Any) -> None:
    routes = stack.faults
    assert stack.to_json()["services"]["toxiproxy"]["implementation"] == "builtin"
    host, port = routes.dependency("redis", "agent-0", stack.service("redis"))
    r = ["redis", host, str(port)]
    big = "x" * 200_000
    import redis  # the value is written directly, as any client would

    direct = redis.Redis.from_url(stack.endpoints["redis"] + "/0")
    direct.set("av:big", big)
    try:
        base = _in_agent(stack, REDIS_PROBE, "ping", *r[1:])["ping_s"]
        with toxic(stack, "redis.agent-0", "latency", latency=150):
            slow = _in_agent(stack, REDIS_PROBE, "ping", *r[1:])["ping_s"]
        assert 0.14 <= slow - base <= 0.45, (base, slow)

        with toxic(stack, "redis.agent-0", "bandwidth", rate=100):  # 100 KB/s
            got = _in_agent(stack, REDIS_PROBE, "get_big", *r[1:])
        assert got["bytes"] >= 200_000 and 1.4 <= got["seconds"] <= 4.0, got

        with toxic(stack, "redis.agent-0", "limit_data", bytes=1000):
            cut = _in_agent(stack, REDIS_PROBE, "get_big", *r[1:])
        assert cut["bytes"] == 1000, cut

        with toxic(stack, "redis.agent-0", "reset_peer", timeout=0):
            reset = _in_agent(stack, REDIS_PROBE, "silent", *r[1:])
        assert reset.get("error") == "ConnectionResetError", reset

        with toxic(stack, "redis.agent-0", "timeout", timeout=500):
            silent = _in_agent(stack, REDIS_PROBE, "silent", *r[1:])
        assert silent.get("data") == "" and 0.45 <= silent["closed_after_s"] <= 2.0, silent

        with down(stack, "redis.agent-0"):
            refused = _in_agent(stack, REDIS_PROBE, "ping", *r[1:])
        assert refused.get("error") == "ConnectionRefusedError", refused
        # the route is back, and it is the agent's only: other replicas were untouched
        assert "ping_s" in _in_agent(stack, REDIS_PROBE, "ping", *r[1:])
    finally:
        direct.delete("av:big")
        direct.close()


def _latency_added(stack: Any, dependency: str, probe: str, key: str, slack_s: float) -> None:
    """A 200 ms latency toxic on agent-0's route to ``dependency`` slows the call from
    inside the agent by at least 200 ms, and by not much more (``slack_s``)."""
    host, port = stack.faults.dependency(dependency, "agent-0", stack.service(dependency))
    address = f"http://{host}:{port}"
    base = _in_agent(stack, probe, address)[key]
    with toxic(stack, f"{dependency}.agent-0", "latency", latency=200):
        slow = _in_agent(stack, probe, address)[key]
    # the lower bound is on the slow call alone: base is one sample of its own, and on a
    # busy machine it can be slow
    assert slow >= 0.19 and slow - base <= slack_s, (dependency, base, slow)


def test_latency_on_the_llm_and_milvus_routes(stack: Any) -> None:
    _latency_added(stack, "llm", LLM_PROBE, "health_s", slack_s=0.6)
    _latency_added(stack, "milvus", MILVUS_PROBE, "list_s", slack_s=1.5)
