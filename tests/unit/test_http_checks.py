"""The HTTP checks a gate runs many times: health of every replica at once, the replicas
serving through the load balancer, and clients that share one TLS context."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from agentverify import _http
from agentverify.config import load_config
from agentverify.drills.steps import _replicas_serving
from agentverify.scenarios.runner import ScenarioContext
from agentverify.scenarios.smoke import unhealthy


@pytest.fixture
def serve() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes = b"{}", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def test_health_is_asked_of_every_replica_at_once_and_failures_keep_their_order(
        serve: Callable[[type[BaseHTTPRequestHandler]], str]) -> None:
    # each answer waits until all three replicas were asked: one after another, the
    # first would wait alone and the barrier would break
    barrier = threading.Barrier(3, timeout=5)

    class Health(_Quiet):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                self.reply(500, b"asked alone")
                return
            self.reply(503 if self.path.startswith("/bad") else 200, b"redis down")

    url = serve(Health)
    replicas = [SimpleNamespace(instance=f"agent-{i}", url=f"{url}/{kind}")
                for i, kind in enumerate(("bad", "ok", "bad"))]
    assert unhealthy(replicas, "/health") == ["agent-0: 503 redis down",
                                              "agent-2: 503 redis down"]
    assert unhealthy([], "/health") == []


def test_replicas_serving_stops_asking_once_every_replica_answered(
        tmp_path: Path, serve: Callable[[type[BaseHTTPRequestHandler]], str]) -> None:
    config = load_config(None, "dev")  # the reference agent's contract
    asked: list[str] = []
    lock = threading.Lock()

    def make(serving: int) -> type[BaseHTTPRequestHandler]:
        class RoundRobin(_Quiet):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    asked.append(self.path)
                    n = len(asked)
                self.reply(200, b'{"answer": "a", "sources": [], "cached": false}',
                           **{"X-Agent-Replica": f"agent-{n % serving}"})
        return RoundRobin

    for serving, fleet in ((5, 5), (3, 5)):
        asked.clear()
        stack = SimpleNamespace(lb_url=serve(make(serving)),
                                replicas=[object() for _ in range(fleet)])
        ctx = ScenarioContext(stack, config, env="dev", report_dir=tmp_path,  # type: ignore[arg-type]
                              say=lambda line: None)
        assert _replicas_serving(ctx) == serving
        if serving == fleet:  # all found in the first wave or two: no more questions
            assert len(asked) <= 16
        else:  # a replica that never answers is looked for with every question
            assert len(asked) == 40


def test_clients_of_their_own_share_the_process_tls_context() -> None:
    with _http.new_client(timeout=1.0) as one, _http.new_client(timeout=2.0) as two:
        assert _http.tls() is _http.tls()
        for client in (one, two, _http.client()):
            pool = client._transport._pool  # type: ignore[attr-defined]
            assert pool._ssl_context is _http.tls()
