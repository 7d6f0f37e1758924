"""Routes through the fault proxy: every edge of the stack that a fault can hit.

When the stack has a ``toxiproxy`` service (``stack.faults.enabled``), nothing talks to
anything directly. The Stack asks :class:`FaultRoutes` for an address and gets a proxy
of its own for each edge, created through the proxy's Toxiproxy API:

=============================  ==========================================================
proxy name                     edge
=============================  ==========================================================
``redis.agent-1``              agent replica slot 1 -> Redis (likewise ``milvus.agent-1``,
                               ``llm.agent-1``); every generation of the slot uses it
``agent.agent-1.g2``           nginx -> that instance of the replica (per instance, so a
                               rollout never re-points a proxy a request is in flight on)
``lb``                         clients (probe, load) -> nginx
=============================  ==========================================================

A proxy listens where the other services reach the proxy service (its address: the
loopback locally, its network alias in a container), on a port it picks itself (the
resolved listen address is read back); the ``lb`` proxy listens on the proxy service's
declared ``lb`` port, because that one must be published to this machine. Only the
agent sees different addresses: its environment and config.yaml name the proxies.

Example:
    >>> routes = FaultRoutes(stack.service("toxiproxy"))          # doctest: +SKIP
    >>> routes.dependency("redis", "agent-0", stack.service("redis"))
    ('127.0.0.1', 39731)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from agentverify.errors import StackError
from agentverify.faults.client import Proxy, ToxiproxyClient
from agentverify.stack.backend import Handle
from agentverify.stack.spec import ServiceSpec

__all__ = ["DEPENDENCIES", "FaultRoutes", "ProxiedPeer", "edge_name", "instance_edge_name"]

#: the services every agent replica reaches through its own proxies
DEPENDENCIES = ("redis", "milvus", "llm")
LB_EDGE = "lb"


def edge_name(service: str, instance: str) -> str:
    """``redis.agent-1``: the proxy between replica slot ``instance`` and ``service``."""
    return f"{service}.{instance}"


def instance_edge_name(handle: Handle) -> str:
    """``agent.agent-1.g2``: the proxy between nginx and one instance of a replica."""
    return f"agent.{handle.key}"


@dataclass(frozen=True)
class ProxiedPeer:
    """A peer as one agent replica reaches it: through its proxy (satisfies ``Peer``)."""

    spec: ServiceSpec
    host: str
    port: int

    def address(self, port: str | None = None) -> tuple[str, int]:
        return self.host, self.port


class FaultRoutes:
    """The proxies of one stack, created on demand and forgotten when their edge goes.

    Args:
        proxy: the running ``toxiproxy`` service.
        edges: which edges go through it (``stack.faults.edges``).
    """

    def __init__(self, proxy: Handle,
                 edges: tuple[str, ...] = (*DEPENDENCIES, "agent", LB_EDGE)) -> None:
        self.proxy = proxy
        self.edges = tuple(edges)
        self.client = ToxiproxyClient(proxy.url("api"))
        #: where the other services reach the proxy (and so where its proxies listen)
        self.host = proxy.address("api")[0]
        self._lock = threading.Lock()
        self._known: dict[str, Proxy] = {}

    def close(self) -> None:
        self.client.close()

    def _ensure(self, name: str, upstream: tuple[str, int], *, port: int = 0) -> Proxy:
        """The proxy ``name`` towards ``upstream`` (created, or re-pointed if it changed)."""
        wanted = f"{upstream[0]}:{upstream[1]}"
        with self._lock:
            known = self._known.get(name)
            if known is not None and known.upstream == wanted:
                return known
            listen = known.listen if known is not None else f"{self.host}:{port}"
            (proxy,) = self.client.populate([{"name": name, "listen": listen,
                                              "upstream": wanted, "enabled": True}])
            self._known[name] = proxy
            return proxy

    def dependency(self, service: str, instance: str, target: Handle) -> tuple[str, int]:
        """Where replica slot ``instance`` reaches ``service`` (its proxy)."""
        proxy = self._ensure(edge_name(service, instance), target.address())
        return self.host, proxy.port

    def peers_for(self, instance: str, peers: dict[str, Handle]) -> dict[str, object]:
        """``peers`` as replica slot ``instance`` sees them: its dependencies proxied."""
        out: dict[str, object] = dict(peers)
        for service in DEPENDENCIES:
            if service in peers and service in self.edges:
                host, port = self.dependency(service, instance, peers[service])
                out[service] = ProxiedPeer(peers[service].spec, host, port)
        return out

    def to_instance(self, handle: Handle) -> tuple[str, int]:
        """Where nginx reaches one instance of a replica (its proxy, or directly when the
        ``agent`` edge is not routed)."""
        if "agent" not in self.edges:
            return handle.address("http")
        proxy = self._ensure(instance_edge_name(handle), handle.address("http"))
        return self.host, proxy.port

    def front(self, lb: Handle) -> None:
        """The ``lb`` proxy, on the proxy service's published ``lb`` port, towards nginx."""
        if LB_EDGE in self.edges:
            self._ensure(LB_EDGE, lb.address("http"), port=self.proxy.address(LB_EDGE)[1])

    def require(self, edge: str) -> None:
        """Raise unless ``edge`` is routed through the proxy."""
        if edge not in self.edges:
            raise StackError(f"the {edge} edge does not go through the fault proxy: add it "
                             f"to stack.faults.edges (now {list(self.edges)})")

    def forget_instance(self, handle: Handle) -> None:
        """Delete the proxy of an instance that is gone."""
        self._delete(instance_edge_name(handle))

    def forget_slot(self, instance: str) -> None:
        """Delete the dependency proxies of a replica slot that is gone (scaled in)."""
        for service in DEPENDENCIES:
            self._delete(edge_name(service, instance))

    def _delete(self, name: str) -> None:
        with self._lock:
            if self._known.pop(name, None) is None:
                return
        self.client.delete_proxy(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._known)
