"""The agent's request log: one JSON line per HTTP request, with its request id.

Every response carries ``X-Request-Id`` (a valid incoming one is kept, else a new one is
made), and the same id is in the request's line of the log file ``AGENT_LOG_FILE``, so a
client's reply can be tied to its line. The line is written when the response starts,
before the client has it: a reply received is a line written.

The file is opened in append mode and reopened on :meth:`RequestLog.reopen` — what the
app's SIGHUP handler calls after ``logrotate`` renamed the file (``postrotate``): from
then on lines go to a new file of the same name. Without a file (the variable unset)
requests are not logged, and the header is still sent.

A line::

    {"ts": "2026-05-01T10:00:00.123Z", "request_id": "4f1c...", "method": "POST",
     "path": "/chat", "status": 200, "duration_ms": 41.2, "replica": "agent-1",
     "version": "v1"}

Example:
    >>> log = RequestLog(None)
    >>> log.write({"request_id": "r1"})   # no file: nothing is written
    >>> log.lines
    0
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import IO, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REQUEST_ID_HEADER", "RequestLog", "RequestLogMiddleware", "request_id_of"]

REQUEST_ID_HEADER = "X-Request-Id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def request_id_of(incoming: str | None) -> str:
    """The id of a request: ``incoming`` when it is a sane id, else a new one.

    Example:
        >>> request_id_of("abc-1"), len(request_id_of("not an id!"))
        ('abc-1', 32)
    """
    if incoming and _VALID_ID.match(incoming):
        return incoming
    return uuid.uuid4().hex


class RequestLog:
    """Request lines into ``path`` (None: nowhere), reopened on :meth:`reopen`.

    Args:
        path: The log file; opened (created) at the first line.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.lines = 0
        self._file: IO[str] | None = None
        self._reopen = False

    def write(self, record: dict[str, Any]) -> None:
        """Write ``record`` with a UTC timestamp as one line, flushed at once."""
        if self.path is None:
            return
        if self._reopen and self._file is not None:
            self._file.close()
            self._file = None
        self._reopen = False
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        self._file.write(json.dumps({"ts": stamp, **record}, separators=(",", ":")) + "\n")
        self.lines += 1

    def reopen(self) -> None:
        """Reopen the file before the next line (the file was moved: logrotate).

        Only raises a flag, so it is safe in a signal handler that interrupts
        :meth:`write`.
        """
        self._reopen = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RequestLogMiddleware:
    """Pure ASGI middleware: a request id per request, in ``X-Request-Id`` and the log."""

    def __init__(self, app: ASGIApp, log: RequestLog, identity: dict[str, str]) -> None:
        self.app = app
        self.log = log
        self.identity = identity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
        request_id = request_id_of(incoming)
        started = time.perf_counter()
        logged = False

        def line(status: int) -> None:
            nonlocal logged
            logged = True
            self.log.write({"request_id": request_id, "method": scope.get("method"),
                            "path": scope.get("path"), "status": status,
                            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                            **self.identity})

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode("latin-1"))]
                line(int(message["status"]))  # before the client can have the reply
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not logged:  # the app failed before answering: the server answers 500
                line(500)
