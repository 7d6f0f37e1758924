"""Damaged copies of a backup archive, for tests and for rehearsing a refused restore.

What is here: :func:`tamper` writes a copy of an archive broken in one of the
:data:`TAMPER_MODES` (cut short, a flipped byte, a member added, left out or altered,
an unknown format version); every one of them must be refused by
:func:`~agentverify.backup.archive.read_archive`.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path

from agentverify.backup.archive import FORMAT_VERSION, MANIFEST, member_info

__all__ = ["TAMPER_MODES", "tamper"]


def tamper(src: Path, dst: Path, mode: str) -> Path:
    """Write a damaged copy of an archive (for rehearsing a refused restore).

    Modes: ``truncate`` (cut in half), ``flip_byte`` (one byte of the compressed
    stream inverted), ``extra_member`` (a file the manifest does not list),
    ``missing_member`` (one listed file left out), ``altered_member`` (one listed file
    changed, recompressed cleanly), ``bad_version`` (an unknown format version).
    """
    data = src.read_bytes()
    if mode == "truncate":
        dst.write_bytes(data[: len(data) // 2])
    elif mode == "flip_byte":
        pos = len(data) // 2
        dst.write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:])
    elif mode in {"extra_member", "missing_member", "altered_member", "bad_version"}:
        members: list[tuple[str, bytes]] = []
        with tarfile.open(src, "r:gz") as tar:
            for m in tar:
                fh = tar.extractfile(m)
                members.append((m.name, fh.read() if fh else b""))
        if mode == "extra_member":
            members.append(("redis/notes.txt", b"not part of the backup\n"))
        elif mode == "missing_member":
            members = [m for m in members if m[0] != _largest(members)]
        elif mode == "altered_member":
            victim = _largest(members)
            members = [(n, b[:-2] + b"X\n" if n == victim else b) for n, b in members]
        else:
            manifest = json.loads(dict(members)[MANIFEST])
            manifest["format_version"] = FORMAT_VERSION + 98
            members = [(n, json.dumps(manifest).encode() if n == MANIFEST else b)
                       for n, b in members]
        with tarfile.open(dst, "w:gz") as tar:
            for n, b in members:
                tar.addfile(member_info(n, len(b), time.time()), io.BytesIO(b))
    else:
        raise ValueError(f"unknown tamper mode {mode!r}")
    return dst


TAMPER_MODES = ("truncate", "flip_byte", "extra_member", "missing_member", "altered_member",
                "bad_version")


def _largest(members: Iterable[tuple[str, bytes]]) -> str:
    """The largest member other than the manifest (the entities, in practice)."""
    candidates = [(len(b), n) for n, b in members if n != MANIFEST]
    return max(candidates)[1]
