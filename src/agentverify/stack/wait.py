"""Readiness checks: a small object each service declares.

A :class:`WaitStrategy` polls a :class:`ServiceTarget` until it is ready or its deadline
passes. Targets are backend-neutral (a local process and a container both satisfy the
protocol), so the same strategy gates start-up on every backend and gates each replica
of a rolling update.

Example:
    >>> HttpWaitStrategy("http", "/health").with_timeout(30)   # doctest: +ELLIPSIS
    HttpWaitStrategy(port='http', path='/health', ...)
"""

from __future__ import annotations

import re
import signal
import socket
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import httpx

from agentverify import _http
from agentverify.errors import ServiceNotReady, ServiceStartError

__all__ = [
    "ServiceStatus",
    "ServiceTarget",
    "WaitStrategy",
    "HttpWaitStrategy",
    "PortWaitStrategy",
    "LogWaitStrategy",
    "CompositeWaitStrategy",
]


#: exit statuses of a process that ended because it was asked to: 0, or ended *by* SIGTERM
#: (uvicorn and many servers re-raise it after a graceful shutdown): -15 from a parent's
#: wait(), 143 (128 + 15) from a shell or a container's init
CLEAN_EXIT_CODES = frozenset({0, -signal.SIGTERM, 128 + signal.SIGTERM})


@dataclass(frozen=True)
class ServiceStatus:
    """What a backend knows about one running instance."""

    running: bool
    exit_code: int | None = None
    detail: str = ""

    @property
    def stopped_cleanly(self) -> bool:
        """True unless it ended otherwise than by request (killed after its grace period,
        crashed); an unknown exit status counts as clean.

        Example:
            >>> ServiceStatus(False, 143).stopped_cleanly, ServiceStatus(False, -9).stopped_cleanly
            (True, False)
        """
        return self.running or self.exit_code is None or self.exit_code in CLEAN_EXIT_CODES

    def __str__(self) -> str:
        if self.running:
            return "running"
        code = "unknown" if self.exit_code is None else str(self.exit_code)
        return f"exited (code {code}){': ' + self.detail if self.detail else ''}"


@runtime_checkable
class ServiceTarget(Protocol):
    """What a readiness check, a probe or a fault injector needs from an instance."""

    @property
    def name(self) -> str: ...

    def endpoint(self, port: str) -> tuple[str, int]:
        """(host, port) reachable from this machine for the named port."""

    def status(self) -> ServiceStatus: ...

    def logs(self, tail: int = 50) -> str: ...


class WaitStrategy:
    """Poll a target until :meth:`check` passes, the target exits, or the deadline passes."""

    #: errors that mean "not ready yet" rather than "broken"
    transient: tuple[type[BaseException], ...] = (OSError, httpx.HTTPError)

    def __init__(self) -> None:
        self.timeout = 60.0
        self.poll_interval = 0.1

    def with_timeout(self, seconds: float) -> WaitStrategy:
        self.timeout = float(seconds)
        return self

    def with_poll_interval(self, seconds: float) -> WaitStrategy:
        self.poll_interval = float(seconds)
        return self

    def check(self, target: ServiceTarget) -> bool:  # pragma: no cover - abstract
        """One probe; True when ready. May raise a transient error."""
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__

    def wait_until_ready(self, target: ServiceTarget, *, deadline: float | None = None) -> float:
        """Block until ready; return the seconds it took.

        Raises:
            ServiceStartError: the target exited before it was ready.
            ServiceNotReady: the deadline passed; the message has status, the last
                probe error and the recent log lines.
        """
        start = time.monotonic()
        end = deadline if deadline is not None else start + self.timeout
        last_error = "no probe answered yet"
        while True:
            status = target.status()
            if not status.running:
                raise ServiceStartError(
                    f"{target.name} exited before it was ready: {status}\n"
                    f"--- last log lines of {target.name} ---\n{target.logs(30)}"
                )
            try:
                if self.check(target):
                    return time.monotonic() - start
                last_error = "probe answered, but not ready"
            except self.transient as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= end:
                raise ServiceNotReady(
                    f"{target.name} not ready after {time.monotonic() - start:.1f}s "
                    f"({self.describe()}); status: {status}; last probe: {last_error}\n"
                    f"--- last log lines of {target.name} ---\n{target.logs(30)}\n"
                    f"Hint: raise stack.start_timeout, or read the whole log above."
                )
            time.sleep(self.poll_interval)


class PortWaitStrategy(WaitStrategy):
    """Ready when the port accepts a TCP connection (the seed's 'Waiting for host:port')."""

    def __init__(self, port: str) -> None:
        super().__init__()
        self.port = port

    def check(self, target: ServiceTarget) -> bool:
        host, port = target.endpoint(self.port)
        with socket.create_connection((host, port), timeout=1.0) as sock:
            # a publishing proxy (docker-proxy) accepts at once and closes the connection
            # when nothing listens behind it yet: an EOF within a moment is "not yet"
            sock.settimeout(0.1)
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    raise _NotYet("connection closed at once: nothing listens behind it yet")
            except TimeoutError:
                pass
            return True

    def describe(self) -> str:
        return f"port {self.port} accepting connections"

    def __repr__(self) -> str:
        return f"PortWaitStrategy(port={self.port!r}, timeout={self.timeout})"


class HttpWaitStrategy(WaitStrategy):
    """Ready when ``GET path`` answers ``status`` (and contains ``body_contains``)."""

    def __init__(self, port: str = "http", path: str = "/health", *, status: int = 200,
                 body_contains: str | None = None) -> None:
        super().__init__()
        self.port = port
        self.path = path
        self.status = status
        self.body_contains = body_contains

    def check(self, target: ServiceTarget) -> bool:
        host, port = target.endpoint(self.port)
        resp = _http.client().get(f"http://{host}:{port}{self.path}", timeout=2.0)
        if resp.status_code != self.status:
            raise _NotYet(f"GET {self.path} answered {resp.status_code}: {resp.text[:200]}")
        if self.body_contains is not None and self.body_contains not in resp.text:
            raise _NotYet(f"GET {self.path} body lacks {self.body_contains!r}")
        return True

    def describe(self) -> str:
        return f"GET {self.path} -> {self.status}"

    def __repr__(self) -> str:
        return (f"HttpWaitStrategy(port={self.port!r}, path={self.path!r}, "
                f"status={self.status}, timeout={self.timeout})")


class LogWaitStrategy(WaitStrategy):
    """Ready when the log matches ``pattern`` (a regular expression)."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def check(self, target: ServiceTarget) -> bool:
        return bool(self.pattern.search(target.logs(500)))

    def describe(self) -> str:
        return f"log matching {self.pattern.pattern!r}"

    def __repr__(self) -> str:
        return f"LogWaitStrategy(pattern={self.pattern.pattern!r}, timeout={self.timeout})"


class CompositeWaitStrategy(WaitStrategy):
    """Ready when every strategy is ready, checked in order."""

    def __init__(self, *strategies: WaitStrategy) -> None:
        super().__init__()
        self.strategies = strategies

    def check(self, target: ServiceTarget) -> bool:
        return all(s.check(target) for s in self.strategies)

    def describe(self) -> str:
        return " and ".join(s.describe() for s in self.strategies)

    def __repr__(self) -> str:
        return f"CompositeWaitStrategy{self.strategies!r}"


class _NotYet(OSError):
    """A probe answered, but not with ready (treated as transient)."""
