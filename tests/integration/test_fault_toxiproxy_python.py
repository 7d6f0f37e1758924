"""The PyPI client toxiproxy-python 0.1.1 drives the fault proxy, with its effects checked on real redis.

toxiproxy-python keeps the server's host and port on a class (``APIConsumer``), so the
test sets them and puts the old values back afterwards. It uses the deprecated
``POST /proxies/{p}`` to enable and disable, which the server still accepts.
"""

# Fixtures are imported from fault_servers, so their names are parameters here too.
# ruff: noqa: F811

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import NotFound, ProxyExists

from tests.integration.fault_servers import Served, fault_server, redis_server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


@pytest.fixture
def toxiproxy_python(fault_server: Served) -> Iterator[Toxiproxy]:
    saved = (APIConsumer.host, APIConsumer.port)
    APIConsumer.host, APIConsumer.port = fault_server.host, fault_server.port
    server = Toxiproxy()
    try:
        yield server
    finally:
        try:
            server.destroy_all()
        finally:
            APIConsumer.host, APIConsumer.port = saved


def ping_seconds(listen: str) -> float:
    host, port = listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
        return time.monotonic() - start


def test_toxiproxy_python_drives_the_server(toxiproxy_python: Toxiproxy, redis_server: Served) -> None:
    server = toxiproxy_python
    assert server.running() is True
    assert server.version().startswith(b'{"version": ')

    proxy = server.create(upstream=f"127.0.0.1:{redis_server.port}", name="redis")
    assert proxy.listen.startswith("127.0.0.1:") and not proxy.listen.endswith(":0")
    assert set(server.proxies()) == {"redis"}
    with pytest.raises(ProxyExists):
        server.create(upstream=f"127.0.0.1:{redis_server.port}", name="redis")
    assert ping_seconds(proxy.listen) < 0.1

    proxy.add_toxic(type="latency", attributes={"latency": 250})
    toxic = proxy.get_toxic("latency_downstream")
    assert (toxic.type, toxic.stream, toxic.attributes["latency"]) == ("latency", "downstream", 250)
    assert ping_seconds(proxy.listen) >= 0.25

    proxy.disable()
    assert server.get_proxy("redis").enabled is False
    with pytest.raises(ConnectionRefusedError):
        ping_seconds(proxy.listen)
    proxy.enable()
    assert server.get_proxy("redis").enabled is True

    with proxy.down():
        with pytest.raises(ConnectionRefusedError):
            ping_seconds(proxy.listen)
    assert ping_seconds(proxy.listen) >= 0.25  # the toxic survived the down time

    assert server.reset() is True
    assert proxy.toxics() == {} and ping_seconds(proxy.listen) < 0.1

    proxy.add_toxic(type="timeout", name="cut", stream="upstream", attributes={"timeout": 0})
    assert proxy.destroy_toxic("cut") is True
    with pytest.raises(NotFound):
        proxy.destroy_toxic("cut")

    populated = server.populate([{"name": "second", "upstream": f"127.0.0.1:{redis_server.port}",
                                  "listen": "127.0.0.1:0"}])
    assert [p.name for p in populated] == ["second"] and ping_seconds(populated[0].listen) < 0.1

    assert server.destroy(proxy) is True
    assert set(server.proxies()) == {"second"}
    with pytest.raises(NotFound):
        proxy.destroy()
