"""One JSON line per HTTP request, to stdout or to the file ``SUPPORT_LOG_FILE``.

The file is written through :class:`logging.handlers.WatchedFileHandler`, which reopens
it when it was moved or deleted, so ``logrotate`` works without ``copytruncate``; SIGHUP
(the usual ``postrotate`` signal) reopens it too instead of killing the process.

A line::

    {"ts": "2026-05-01T10:00:00.123Z", "request_id": "4f1c...", "method": "POST",
     "path": "/v1/ask", "status": 200, "duration_ms": 41.2, "client": "acme",
     "cached": false, "conversation_id": "c-1", "instance": "host:8000"}

Example:
    >>> import io
    >>> log = AccessLog(stream=io.StringIO())
    >>> log.write({"request_id": "r1", "status": 200})
    >>> '"request_id": "r1"' in log.stream.getvalue()
    True
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import threading
import time
from typing import IO, Any

__all__ = ["AccessLog"]


class AccessLog:
    """Writes request records; each record is one line, flushed as it is written.

    Args:
        path: Log file; None writes to ``stream``.
        stream: Where lines go without a file (default stdout).
    """

    def __init__(self, path: str | None = None, stream: IO[str] | None = None) -> None:
        """Open the file (or take the stream)."""
        self.path = path
        self.stream = stream if stream is not None else sys.stdout
        self._lock = threading.Lock()
        self._handler: logging.handlers.WatchedFileHandler | None = None
        self._reopen = False
        if path is not None:
            self._handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Write ``record`` (plus a UTC timestamp) as one JSON line."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
        line = json.dumps({"ts": stamp, **record}, separators=(", ", ": "))
        with self._lock:
            if self._handler is not None and self._reopen:
                self._reopen = False
                self._handler.close()
                self._handler = logging.handlers.WatchedFileHandler(self.path or "", encoding="utf-8")
            if self._handler is not None:
                # WatchedFileHandler.emit does the stat-and-reopen; a LogRecord carries the line.
                self._handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
            else:
                self.stream.write(line + "\n")
                self.stream.flush()

    def request_reopen(self) -> None:
        """Reopen the file before the next line (safe to call from a signal handler)."""
        # A signal handler runs in the main thread, maybe inside write(): it must not take
        # the lock, so it only raises a flag that write() acts on.
        self._reopen = True

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._handler is not None:
                self._handler.close()
