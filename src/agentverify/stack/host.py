"""What every backend does on this machine (the host): ports, files, logs.

What is here: :func:`free_port` (a port free on 127.0.0.1, outside the range the kernel
takes outgoing connections' ports from),
:func:`write_atomic` (a file readers such as nginx or Prometheus' file_sd never see half
of) and :func:`tail_file` (the last lines of a possibly large log file). The local and the
docker backend both use them; neither imports the other.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from collections import deque
from pathlib import Path

__all__ = ["free_port", "tail_file", "write_atomic"]


#: the lowest port :func:`free_port` hands out (below it: well-known and common services)
LOWEST_PORT = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: ports handed out lately by this process, not yet bound by what they were handed to
_handed: deque[int] = deque(maxlen=1024)
_handed_lock = threading.Lock()


def _ephemeral_low() -> int:
    """Where the kernel's ephemeral range starts (Linux's default: 32768)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a service that binds it a moment later.

    Chosen at random below the kernel's ephemeral range, not by binding port 0: port 0
    draws from the range every outgoing connection takes its local port from, so under
    load (a probe opening a connection per request, Locust, nginx) a port released by
    this check was taken by a connection before the service could bind it ("address
    already in use"). Where the range leaves no room below it, port 0 it is.
    """
    low = _ephemeral_low()
    with _handed_lock:
        for _ in range(200 if low - LOWEST_PORT >= 1000 else 0):
            port = random.randrange(LOWEST_PORT, low)
            if port not in _handed and _bindable(port):
                _handed.append(port)
                return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        _handed.append(port)
        return port


def tail_file(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a (possibly large) file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def write_atomic(path: Path, content: str) -> None:
    """Write a file so readers (nginx, Prometheus' file_sd) never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)
