"""Every toxic has a measured effect through the fault proxy on real servers.

Real redis-server (RESP over raw sockets and redis-py), the real LLM stub (HTTP under
uvicorn) and a real Milvus Lite (gRPC over HTTP/2 via pymilvus). Each test measures the
effect (seconds, bytes per second, bytes received, the error raised) against what the
toxic promises. Margins come from runs on the 2-core shared machine: a proxied PING took
under 5 ms, so the upper margins below (+150 ms on a timer, +/-30 % on a rate) leave room
for other work on the machine without hiding a missing effect.
"""

# Fixtures are imported from fault_servers, so their names are parameters here too.
# ruff: noqa: F811

from __future__ import annotations

import socket
import statistics
import time

import httpx
import pytest
import redis

from agentverify.faults.client import Proxy, ToxiproxyClient
from tests.integration.fault_servers import (  # noqa: F401  (fixtures)
    Served,
    assert_closed_by_peer,
    fault_server,
    llm_stub,
    milvus_server,
    redis_server,
    toxiproxy,
)

pytestmark = pytest.mark.integration

SLACK = 0.15  # seconds a timer may run late on a busy machine


@pytest.fixture
def redis_proxy(toxiproxy: ToxiproxyClient, redis_server: Served) -> Proxy:
    return toxiproxy.create_proxy("redis.agent-0", "127.0.0.1:0", f"127.0.0.1:{redis_server.port}")


def connect(proxy: Proxy, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=timeout)


def ping(sock: socket.socket) -> float:
    start = time.monotonic()
    sock.sendall(b"PING\r\n")
    assert sock.recv(64) == b"+PONG\r\n"
    return time.monotonic() - start


def median_ping(proxy: Proxy, n: int = 5) -> float:
    with connect(proxy) as sock:
        return statistics.median(ping(sock) for _ in range(n))


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def seconds_until_closed(sock: socket.socket) -> float:
    start = time.monotonic()
    while sock.recv(65536):
        pass
    return time.monotonic() - start


# --- latency ----------------------------------------------------------------------------

def test_latency_adds_its_delay_per_direction_and_in_sum(toxiproxy: ToxiproxyClient, redis_proxy: Proxy) -> None:
    base = median_ping(redis_proxy)
    assert base < 0.05
    toxiproxy.add_toxic(redis_proxy.name, "latency", attributes={"latency": 200})
    assert 0.2 <= median_ping(redis_proxy) <= 0.2 + base + SLACK
    toxiproxy.add_toxic(redis_proxy.name, "latency", stream="upstream", attributes={"latency": 100})
    assert 0.3 <= median_ping(redis_proxy) <= 0.3 + base + SLACK


def test_latency_keeps_throughput(toxiproxy: ToxiproxyClient, redis_proxy: Proxy, redis_server: Served) -> None:
    redis.Redis(port=redis_server.port).set("big", b"x" * 4_000_000)
    client = redis.Redis(host=redis_proxy.host, port=redis_proxy.port, socket_timeout=30)

    def transfer() -> float:
        start = time.monotonic()
        assert len(client.get("big")) == 4_000_000
        return time.monotonic() - start

    base = transfer()  # the same 4 MB through the proxy, untoxic, measured in this run
    toxiproxy.add_toxic(redis_proxy.name, "latency", attributes={"latency": 100})
    elapsed = transfer()
    # Pipelined: the 4 MB arrive ~100 ms late. A delay per 32 KB read (122 of them) would add
    # 12 s; the margin (1 s beside the untoxic transfer) only absorbs a busy machine.
    assert 0.1 <= elapsed <= base + 0.1 + 1.0, f"{elapsed:.2f} s with latency, {base:.2f} s without"
    client.close()


def test_latency_on_the_llm_endpoint(toxiproxy: ToxiproxyClient, llm_stub: Served) -> None:
    llm = toxiproxy.create_proxy("llm.agent-0", "127.0.0.1:0", f"127.0.0.1:{llm_stub.port}")
    url = f"http://{llm.listen}/v1/chat/completions"
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(trust_env=False, timeout=10) as http:
        assert http.post(url, json=body).status_code == 200
        toxiproxy.add_toxic(llm.name, "latency", stream="upstream", attributes={"latency": 250})
        with httpx.Client(trust_env=False, timeout=10) as fresh:
            start = time.monotonic()
            answer = fresh.post(url, json=body)
            elapsed = time.monotonic() - start
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"]
        assert 0.25 <= elapsed <= 0.25 + 0.3


# --- bandwidth ----------------------------------------------------------------------------

def test_bandwidth_limits_bytes_per_second(toxiproxy: ToxiproxyClient, redis_proxy: Proxy,
                                           redis_server: Served) -> None:
    size = 600_000
    redis.Redis(port=redis_server.port).set("value", b"v" * size)
    toxiproxy.add_toxic(redis_proxy.name, "bandwidth", attributes={"rate": 400})  # 400 KB/s
    client = redis.Redis(host=redis_proxy.host, port=redis_proxy.port, socket_timeout=10)
    start = time.monotonic()
    assert len(client.get("value")) == size
    rate = size / (time.monotonic() - start)
    assert 400_000 * 0.7 <= rate <= 400_000 * 1.3, f"{rate:.0f} B/s through a 400 KB/s toxic"
    client.close()


def test_bandwidth_zero_passes_nothing_but_keeps_the_connection(toxiproxy: ToxiproxyClient,
                                                                redis_proxy: Proxy) -> None:
    with connect(redis_proxy, timeout=1.0) as sock:
        ping(sock)
        toxiproxy.add_toxic(redis_proxy.name, "bandwidth", attributes={"rate": 0})
        sock.sendall(b"PING\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(64)
        toxiproxy.remove_toxic(redis_proxy.name, "bandwidth_downstream")
        assert sock.recv(64) == b"+PONG\r\n"  # held, then delivered: the connection stayed open


# --- reset_peer -------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", ["downstream", "upstream"])
def test_reset_peer_resets_after_its_timeout(toxiproxy: ToxiproxyClient, redis_proxy: Proxy, stream: str) -> None:
    toxiproxy.add_toxic(redis_proxy.name, "reset_peer", stream=stream, attributes={"timeout": 300})
    with connect(redis_proxy) as sock:
        start = time.monotonic()
        sock.sendall(b"PING\r\n")
        with pytest.raises(ConnectionResetError):
            sock.recv(64)
        assert 0.3 <= time.monotonic() - start <= 0.3 + SLACK


def test_reset_peer_surfaces_as_a_connection_error_in_redis_py(toxiproxy: ToxiproxyClient,
                                                               redis_proxy: Proxy) -> None:
    toxiproxy.add_toxic(redis_proxy.name, "reset_peer", attributes={"timeout": 0})
    client = redis.Redis(host=redis_proxy.host, port=redis_proxy.port, socket_timeout=5, retry_on_error=[])
    with pytest.raises(redis.ConnectionError, match="reset by peer"):
        client.ping()
    client.close()


# --- limit_data ---------------------------------------------------------------------------------

def test_limit_data_cuts_the_stream_at_n_bytes(toxiproxy: ToxiproxyClient, redis_proxy: Proxy,
                                                redis_server: Served) -> None:
    redis.Redis(port=redis_server.port).set("k", b"z" * 5000)
    toxiproxy.add_toxic(redis_proxy.name, "limit_data", attributes={"bytes": 1234})
    with connect(redis_proxy) as sock:
        sock.sendall(b"GET k\r\n")
        received = read_all(sock)
    assert len(received) == 1234 and received.startswith(b"$5000\r\nzzz")


# --- down (enabled: false) ---------------------------------------------------------------------

def test_down_refuses_new_connections_and_closes_live_ones(toxiproxy: ToxiproxyClient, redis_proxy: Proxy,
                                                           llm_stub: Served) -> None:
    llm = toxiproxy.create_proxy("llm.agent-0", "127.0.0.1:0", f"127.0.0.1:{llm_stub.port}")
    live = connect(redis_proxy)
    ping(live)
    with httpx.Client(trust_env=False, timeout=5) as http:
        assert http.get(f"http://{llm.listen}/v1/models").status_code == 200
        toxiproxy.disable(redis_proxy.name)
        toxiproxy.disable(llm.name)
        assert_closed_by_peer(live)
        with pytest.raises(ConnectionRefusedError):
            connect(redis_proxy)
        with pytest.raises(httpx.TransportError):
            http.get(f"http://{llm.listen}/v1/models")
        toxiproxy.enable(redis_proxy.name)
        toxiproxy.enable(llm.name)
        assert http.get(f"http://{llm.listen}/v1/models").status_code == 200
    assert median_ping(redis_proxy) < 0.05


# --- timeout ------------------------------------------------------------------------------------

def test_timeout_drops_data_then_closes_after_its_timeout(toxiproxy: ToxiproxyClient, redis_proxy: Proxy) -> None:
    toxiproxy.add_toxic(redis_proxy.name, "timeout", stream="upstream", attributes={"timeout": 500})
    with connect(redis_proxy) as sock:
        sock.sendall(b"PING\r\n")
        assert 0.5 - 0.05 <= seconds_until_closed(sock) <= 0.5 + SLACK


def test_timeout_zero_hangs_and_removing_it_closes_the_connection(toxiproxy: ToxiproxyClient,
                                                                  redis_proxy: Proxy) -> None:
    with connect(redis_proxy, timeout=1.0) as sock:
        ping(sock)
        toxiproxy.add_toxic(redis_proxy.name, "timeout", attributes={"timeout": 0})  # on a live connection
        sock.sendall(b"PING\r\n")
        with pytest.raises(TimeoutError):
            sock.recv(64)
        toxiproxy.remove_toxic(redis_proxy.name, "timeout_downstream")
        assert sock.recv(64) == b""
    assert toxiproxy.get_proxy(redis_proxy.name).toxics == ()


# --- slow_close ---------------------------------------------------------------------------------

def test_slow_close_holds_the_close(toxiproxy: ToxiproxyClient, redis_proxy: Proxy) -> None:
    with connect(redis_proxy) as sock:
        sock.sendall(b"QUIT\r\n")
        assert sock.recv(64) == b"+OK\r\n"
        fast = seconds_until_closed(sock)
    toxiproxy.add_toxic(redis_proxy.name, "slow_close", attributes={"delay": 600})
    with connect(redis_proxy) as sock:
        sock.sendall(b"QUIT\r\n")
        assert sock.recv(64) == b"+OK\r\n"  # data passes at once
        slow = seconds_until_closed(sock)
    assert fast < 0.1 and 0.6 - 0.05 <= slow <= 0.6 + SLACK


# --- slicer -------------------------------------------------------------------------------------

def test_slicer_splits_the_stream_into_small_reads(toxiproxy: ToxiproxyClient, redis_proxy: Proxy,
                                                    redis_server: Served) -> None:
    value = bytes(range(256)) * 8  # 2048 bytes
    redis.Redis(port=redis_server.port).set("s", value)
    expected = b"$2048\r\n" + value + b"\r\n"

    def reads() -> list[int]:
        sizes, got = [], b""
        with connect(redis_proxy) as sock:
            sock.sendall(b"GET s\r\n")
            while len(got) < len(expected):
                chunk = sock.recv(65536)
                assert chunk
                sizes.append(len(chunk))
                got += chunk
        assert got == expected
        return sizes

    assert len(reads()) <= 3
    toxiproxy.add_toxic(redis_proxy.name, "slicer",
                        attributes={"average_size": 64, "size_variation": 16, "delay": 3000})
    sizes = reads()
    assert len(sizes) >= 10 and max(sizes) <= 1024, sizes


# --- toxicity -----------------------------------------------------------------------------------

def test_toxicity_zero_never_and_one_always(toxiproxy: ToxiproxyClient, redis_proxy: Proxy) -> None:
    toxiproxy.add_toxic(redis_proxy.name, "latency", toxicity=0.0, attributes={"latency": 300})
    assert all(median_ping(redis_proxy, n=1) < 0.2 for _ in range(5))
    toxiproxy.update_toxic(redis_proxy.name, "latency_downstream", toxicity=1.0)
    assert all(median_ping(redis_proxy, n=1) >= 0.3 for _ in range(3))


# --- a live gRPC connection (Milvus Lite) ---------------------------------------------------------

def test_toxic_added_to_a_live_grpc_connection_takes_effect(toxiproxy: ToxiproxyClient,
                                                            milvus_server: Served) -> None:
    from pymilvus import MilvusClient

    milvus = toxiproxy.create_proxy("milvus.agent-0", "127.0.0.1:0", f"127.0.0.1:{milvus_server.port}")
    client = MilvusClient(uri=f"http://{milvus.listen}", timeout=10)
    try:
        client.create_collection("faults_probe", dimension=4)

        def timed() -> float:
            start = time.monotonic()
            assert "faults_probe" in client.list_collections()
            return time.monotonic() - start

        base = statistics.median(timed() for _ in range(3))
        toxiproxy.add_toxic(milvus.name, "latency", attributes={"latency": 300})
        assert 0.3 <= statistics.median(timed() for _ in range(3)) <= 0.3 + base + SLACK
        toxiproxy.remove_toxic(milvus.name, "latency_downstream")
        assert statistics.median(timed() for _ in range(3)) <= base + SLACK
        client.drop_collection("faults_probe")
    finally:
        client.close()
