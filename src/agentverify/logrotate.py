"""The agent's request log: rotated with Debian's ``logrotate``, read back by request id.

:func:`rotate` runs the real ``logrotate`` (``-f``: now, whatever its age or size) on
files of this machine, in one of its two ways:

==================  ========================================================================
``rename``          the file is renamed ``NAME.1`` (older ones shift to ``.2`` ...) and no
                    new one is made (``nocreate``): the agent, told by its reopen signal
                    (logrotate's ``postrotate``), creates it. Nothing is lost or doubled.
``copytruncate``    for an agent that cannot reopen its file: the file is copied to
                    ``NAME.1`` and truncated in place. Lines written between the copy and the
                    truncation are lost — logrotate's own manual says so.
==================  ========================================================================

Where it runs: on this machine, on the host path of the file, for every backend. The
local backend's data directories are host directories; the docker backend bind-mounts
each instance's data directory from the host, so a file an agent writes in its
container is a host file too. Running logrotate on the host needs nothing of the
agent's image (a user's image need not carry logrotate), and the reopen signal goes
through :meth:`~agentverify.stack.stack.Stack.signal` after logrotate returns — the
``postrotate`` step, done by the caller rather than by a shell script that would need
the agent's pid or container name and the docker CLI.

:func:`count_request_ids` reads a log as the agent's contract describes it
(``stack.agent.contract.logs``) and counts each request id's lines.

Example:
    >>> rotation = rotate([Path("/run/agent-0/data/agent.log")], mode="rename",
    ...                   workdir=Path("/run/logrotate"))             # doctest: +SKIP
    >>> rotation.rotated                                               # doctest: +SKIP
    (PosixPath('/run/agent-0/data/agent.log.1'),)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agentverify.errors import AgentOpError

__all__ = ["LogCount", "Rotation", "count_request_ids", "find_logrotate", "log_files",
           "rotate"]

#: where Debian installs it (``/usr/sbin`` is not on a non-root user's PATH)
_SBIN = ("/usr/sbin", "/sbin")
#: rotated copies kept (``rotate N``): a rehearsal rotates once or twice
KEEP = 5
_WORD = re.compile(r"[A-Za-z0-9._:-]+")

Mode = Literal["rename", "copytruncate"]


def find_logrotate() -> str:
    """The logrotate binary.

    Raises:
        AgentOpError: it is not installed (the message says how to install it).
    """
    found = shutil.which("logrotate") or shutil.which(
        "logrotate", path=os.pathsep.join(_SBIN))
    if found is None:
        raise AgentOpError("rotating the agent's log needs logrotate, which is not "
                           "installed: apt-get install logrotate (scripts/bootstrap does it)")
    return found


@dataclass(frozen=True)
class Rotation:
    """What one logrotate run did.

    Attributes:
        files: The logs rotated.
        rotated: Where each one's content went (``NAME.1``).
        mode: ``rename`` or ``copytruncate``.
        seconds: How long logrotate took.
    """

    files: tuple[Path, ...]
    rotated: tuple[Path, ...]
    mode: Mode
    seconds: float


def config_text(files: Sequence[Path], mode: Mode, keep: int = KEEP) -> str:
    """The logrotate configuration for ``files`` (quoted: paths may hold spaces).

    Example:
        >>> print(config_text([Path("/d/agent.log")], "rename"))   # doctest: +NORMALIZE_WHITESPACE
        "/d/agent.log" {
            rotate 5
            nocompress
            nocreate
        }
    """
    paths = " ".join(json.dumps(str(f)) for f in files)
    how = "copytruncate" if mode == "copytruncate" else "nocreate"
    return f"{paths} {{\n    rotate {keep}\n    nocompress\n    {how}\n}}\n"


def rotate(files: Sequence[Path], *, mode: Mode, workdir: Path,
           timeout: float = 30.0) -> Rotation:
    """Rotate ``files`` now with logrotate (its config and state file go in ``workdir``).

    Raises:
        AgentOpError: logrotate is missing, a file does not exist, or logrotate failed
            (its output is in the message).
    """
    binary = find_logrotate()
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise AgentOpError(f"no log to rotate at {', '.join(missing)}")
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "logrotate.conf"
    conf.write_text(config_text(files, mode), encoding="utf-8")
    conf.chmod(0o600)  # logrotate ignores a config others may write
    argv = [binary, "-f", "-s", str(workdir / "logrotate.status"), str(conf)]
    t0 = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AgentOpError(f"logrotate did not finish within {timeout:g}s") from None
    seconds = time.monotonic() - t0
    rotated = tuple(f.with_name(f.name + ".1") for f in files)
    # logrotate says "error: ..." and still exits 0 for some problems (a skipped file)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if "error" in line]
    if done.returncode != 0 or errors or not all(r.is_file() for r in rotated):
        output = " / ".join((done.stdout + done.stderr).split("\n")).strip(" /")
        raise AgentOpError(f"logrotate ({mode}) of {', '.join(map(str, files))} failed with "
                           f"exit code {done.returncode}: {output or 'no output'}")
    return Rotation(tuple(files), rotated, mode, seconds)


def log_files(path: Path) -> list[Path]:
    """``path`` and its rotated copies (``path.1``, ``path.2`` ...) that exist, newest
    last (the order lines were written in)."""
    copies = []
    for other in path.parent.glob(path.name + ".*"):
        suffix = other.name[len(path.name) + 1:]
        if suffix.isdigit():
            copies.append((int(suffix), other))
    ordered = [p for _, p in sorted(copies, reverse=True)]
    return ordered + ([path] if path.is_file() else [])


@dataclass(frozen=True)
class LogCount:
    """Lines of request logs, counted by request id."""

    ids: Counter[str]
    lines: int
    unreadable: int


def count_request_ids(files: Iterable[Path], *, fmt: Literal["json", "text"], field: str,
                      wanted: set[str] | None = None, containing: str = "") -> LogCount:
    """Count the lines of each request id in ``files``.

    ``json``: each line is an object; ``field`` is the id's key (dots for nested keys).
    ``text``: the id is a word of the line (only ``wanted`` ids are looked for). A JSON
    line that cannot be read (not JSON, or without the id) is counted in ``unreadable``;
    NUL bytes (what writing past a truncated file leaves) are dropped. ``containing``: only
    lines with this text are read (the ids' common prefix: a fast search of long logs;
    ``lines`` and ``unreadable`` then count those lines only).
    """
    ids: Counter[str] = Counter()
    lines = unreadable = 0
    keys = field.split(".")
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise AgentOpError(f"cannot read the agent's log {path}: {exc.strerror}") from exc
        for raw in text.replace("\x00", "").splitlines():
            if not raw.strip() or containing not in raw:
                continue
            lines += 1
            if fmt == "text":  # any line may be one: the ids are words of it
                ids.update(w for w in _WORD.findall(raw) if wanted is None or w in wanted)
                continue
            try:
                value: object = json.loads(raw)
                for key in keys:
                    value = value.get(key) if isinstance(value, dict) else None
            except ValueError:
                value = None
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                ids[str(value)] += 1
            else:
                unreadable += 1
    return LogCount(ids, lines, unreadable)
