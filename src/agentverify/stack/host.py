"""What every backend does on this machine (the host): ports, files, logs.

What is here: :func:`free_port` (a port free on 127.0.0.1 right now),
:func:`write_atomic` (a file readers such as nginx or Prometheus' file_sd never see half
of) and :func:`tail_file` (the last lines of a possibly large log file). The local and the
docker backend both use them; neither imports the other.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

__all__ = ["free_port", "tail_file", "write_atomic"]


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
