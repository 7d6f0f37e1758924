"""``GET /metrics`` of the fault proxy: Toxiproxy's byte counters in Prometheus text format.

``toxiproxy_proxy_received_bytes_total`` and ``toxiproxy_proxy_sent_bytes_total`` with the
labels ``direction``, ``listener``, ``proxy`` and ``upstream`` (Toxiproxy's
``-proxy-metrics``); process metrics with ``-runtime-metrics`` (Go runtime metrics have no
Python equivalent, so the process collector stands in). Unlike Toxiproxy, which adds a
connection's bytes when it ends, live connections are counted too.

Example:
    >>> from agentverify.faults.api import ProxyCollection
    >>> text, _ = render(ProxyCollection(), proxy=True, runtime=False)
    >>> b"toxiproxy_proxy_sent_bytes_total" in text
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector

if TYPE_CHECKING:
    from agentverify.faults.api import ProxyCollection

__all__ = ["render"]

_LABELS = ["direction", "listener", "proxy", "upstream"]


class _ByteCounters:
    def __init__(self, collection: ProxyCollection):
        self.collection = collection

    def collect(self) -> Any:
        families = {kind: CounterMetricFamily(f"toxiproxy_proxy_{kind}_bytes", "", labels=_LABELS)
                    for kind in ("received", "sent")}
        for proxy in self.collection.proxies.values():
            for (kind, direction, name, listener, upstream), n in sorted(proxy.byte_counts().items()):
                families[kind].add_metric([direction, listener, name, upstream], n)
        yield from families.values()


def render(collection: ProxyCollection, *, proxy: bool, runtime: bool) -> tuple[bytes, str]:
    """The exposition text and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    if proxy:
        registry.register(_ByteCounters(collection))
    if runtime:
        ProcessCollector(registry=registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
