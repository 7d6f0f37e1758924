"""Real servers for the fault-proxy tests: the fault proxy itself, redis-server, the LLM stub, Milvus Lite.

Each is a real process on a free 127.0.0.1 port, started in its own process group and
stopped by its pid (never by name), also when the test fails. A missing binary fails
the test with what to install. Test modules import the fixtures they use from here.

``fault_server`` is parametrized over server implementations: ``builtin`` (ours) always,
``real`` when a ``toxiproxy-server`` binary is on PATH (marker ``toxiproxy_real``), so one
conformance module runs against both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agentverify.faults.client import ToxiproxyClient
from agentverify.stack.host import free_port


def assert_closed_by_peer(sock: socket.socket) -> None:
    """The other end closed ``sock`` (an orderly EOF or a reset both count); ``sock`` is
    closed after."""
    try:
        assert sock.recv(16) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()


@dataclass
class Served:
    """A started server process: its pid, where it listens, and its log."""

    proc: subprocess.Popen
    host: str
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def _wait(served: Served, ready, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if served.proc.poll() is not None:
            raise AssertionError(f"{what} exited with {served.proc.returncode}:\n{served.tail()}")
        try:
            if ready():
                return
        except (OSError, httpx.HTTPError) as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"{what} not ready on {served.url} within {timeout}s ({last}):\n{served.tail()}")


def stop(served: Served, *, grace: float = 10.0) -> int | None:
    """SIGTERM the process (by pid), SIGKILL its group after ``grace``; return its exit code."""
    proc = served.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


@contextlib.contextmanager
def run(cmd: list[str], log: Path, ready, what: str, port: int, *, env: dict[str, str] | None = None,
        cwd: Path | None = None, timeout: float = 30.0) -> Iterator[Served]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    served = Served(proc, "127.0.0.1", port, log)
    try:
        _wait(served, lambda: ready(served), what, timeout)
        yield served
    finally:
        stop(served)


def _http_ok(path: str):
    def ready(served: Served) -> bool:
        return httpx.get(served.url + path, timeout=1, trust_env=False).status_code == 200
    return ready


def _tcp_ping(served: Served) -> bool:
    with socket.create_connection((served.host, served.port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


# -- the fault proxy -----------------------------------------------------------------

def fault_server_command(impl: str, port: int, *extra: str) -> list[str]:
    if impl == "real":
        return ["toxiproxy-server", "-host", "127.0.0.1", "-port", str(port), *extra]
    return [sys.executable, "-m", "agentverify.faults.server", "--host", "127.0.0.1", "--port", str(port), *extra]


@contextlib.contextmanager
def start_fault_server(impl: str, tmp: Path, *extra: str) -> Iterator[Served]:
    port = free_port()
    with run(fault_server_command(impl, port, *extra), tmp / f"toxiproxy-{impl}-{port}.log",
             _http_ok("/version"), f"fault proxy ({impl})", port) as served:
        yield served


def _implementations() -> list:
    impls = [pytest.param("builtin", id="builtin")]
    if shutil.which("toxiproxy-server"):
        impls.append(pytest.param("real", id="real", marks=pytest.mark.toxiproxy_real))
    return impls


@pytest.fixture(scope="module", params=_implementations())
def fault_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A fault-proxy server process for the module, per implementation."""
    with start_fault_server(request.param, tmp_path_factory.mktemp("toxiproxy")) as served:
        served.impl = request.param  # type: ignore[attr-defined]
        yield served


@pytest.fixture
def toxiproxy(fault_server: Served) -> Iterator[ToxiproxyClient]:
    """Our client on the module's server; every proxy is deleted after the test."""
    with ToxiproxyClient(fault_server.url, timeout=10) as client:
        try:
            yield client
        finally:
            for name in client.proxies():
                client.delete_proxy(name)


# -- upstreams -------------------------------------------------------------------------

def require_binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"these tests need {name}: apt-get install {package}", pytrace=False)
    return path


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real redis-server on a free port, with no persistence, in a temp dir."""
    binary = require_binary("redis-server", "redis-server")
    tmp = tmp_path_factory.mktemp("redis")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", str(tmp), "--protected-mode", "no"]
    with run(cmd, tmp / "redis.log", _tcp_ping, "redis-server", port, cwd=tmp) as served:
        yield served


@pytest.fixture(scope="module")
def llm_stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real LLM stub under uvicorn, without auth (LLM_STUB_API_KEYS empty)."""
    tmp = tmp_path_factory.mktemp("llm")
    port = free_port()
    env = {**os.environ, "LLM_STUB_API_KEYS": ""}
    cmd = [sys.executable, "-m", "uvicorn", "agentverify.llm_stub.app:app", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]
    with run(cmd, tmp / "llm.log", _http_ok("/v1/models"), "LLM stub", port, env=env) as served:
        yield served


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real Milvus Lite server (gRPC) on a free port."""
    tmp = tmp_path_factory.mktemp("milvus")
    port = free_port()
    cmd = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp / "data"),
           "--host", "127.0.0.1", "--port", str(port)]

    def ready(served: Served) -> bool:
        with socket.create_connection((served.host, served.port), timeout=1):
            return True

    with run(cmd, tmp / "milvus.log", ready, "Milvus Lite", port, timeout=60) as served:
        yield served
