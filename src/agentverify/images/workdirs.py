"""Where an image build works on this machine.

What is here: :func:`cache_dir` (``AGENTVERIFY_CACHE_DIR``, else the XDG cache: wheel
houses, project wheels, logs), :func:`scratch_root` (a writable directory with the free
space a build needs: ``AGENTVERIFY_BUILD_DIR``, ``/var/tmp``, the temp dir) and
:func:`build_lock` (one image build at a time on this machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from agentverify.errors import BackendUnavailable

__all__ = ["MIN_FREE_BYTES", "build_lock", "cache_dir", "scratch_root"]

MIN_FREE_BYTES = 2 * 1024**3  # a rootfs is ~300 MB, its tar stream is not written to disk


def cache_dir() -> Path:
    root = os.environ.get("AGENTVERIFY_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "agentverify"


@contextlib.contextmanager
def build_lock(progress: Callable[[str], None]) -> Iterator[None]:
    """One image build at a time on this machine (two would debootstrap twice)."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "images.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another `agentverify images build` ({cache / 'images.lock'})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def scratch_root(need: int = MIN_FREE_BYTES) -> Path:
    """/var/tmp (usually on the big disk; /tmp may be a small tmpfs), else the temp dir."""
    for candidate in (os.environ.get("AGENTVERIFY_BUILD_DIR"), "/var/tmp", tempfile.gettempdir()):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK):
            free = shutil.disk_usage(candidate).free
            if free < need:
                raise BackendUnavailable(
                    f"{candidate} has {free / 1024**3:.1f} GiB free; the image build needs "
                    f"{need / 1024**3:.1f} GiB: free space or set AGENTVERIFY_BUILD_DIR")
            return Path(candidate)
    raise BackendUnavailable("no writable scratch directory: set AGENTVERIFY_BUILD_DIR")
