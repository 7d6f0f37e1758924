"""Helpers for integration tests: find what a run left behind, by run id only."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from agentverify.stack.runstate import belongs_to_run


def processes_of_run(run_id: str, run_dir: str | Path) -> list[int]:
    """Pids of every process (host or container) that belongs to this run.

    The same test as the reaper's: the run id in the environment, or a log file / working
    directory in the run directory (redis and nginx overwrite their environment).
    """
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and belongs_to_run(int(e.name), run_id, run_dir)]


def containers_of_run(run_id: str) -> list[str]:
    """Ids of containers and networks labelled with this run id (empty without docker)."""
    label = f"label=agentverify.run={run_id}"
    found = []
    for args in (["docker", "ps", "-aq", "--filter", label],
                 ["docker", "network", "ls", "-q", "--filter", label]):
        try:
            out = subprocess.run(args, capture_output=True, text=True, timeout=30).stdout
        except FileNotFoundError:
            return []
        found += out.split()
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()[:200]
    except OSError:
        return "(gone)"


def leftovers(run_id: str, run_dir: str | Path) -> list[str]:
    """What of the run is still there: a process with its command line, a container."""
    return [f"pid {p} ({_command(p)})" for p in processes_of_run(run_id, run_dir)] + \
        [f"docker {c}" for c in containers_of_run(run_id)]


def wait_for_file(path: Path, timeout: float, proc: subprocess.Popen | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"process exited with {proc.returncode} before writing "
                                 f"{path}:\n{out}")
        time.sleep(0.2)
    raise AssertionError(f"{path} not written within {timeout}s")


def wait_until(predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
