"""The test workers' machine lock (tests/conftest.py): a quiet test waits for the test the
other worker is in, and runs alone; shared holders coming and going cannot starve it."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path

from tests.conftest import machine_lock


def _hold(directory: Path, exclusive: bool, seconds: float, log: list[tuple[str, str]],
          name: str, ready: threading.Event | None = None) -> None:
    with machine_lock(directory, exclusive=exclusive):
        log.append((name, "in"))
        if ready is not None:
            ready.set()
        time.sleep(seconds)
        log.append((name, "out"))


def _until_held(path: Path, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    with open(path, "a") as f:
        while time.monotonic() < deadline:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            fcntl.flock(f, fcntl.LOCK_UN)
            time.sleep(0.01)
    raise AssertionError(f"nobody took {path} in {timeout:g} s")


def test_shared_holders_run_together(tmp_path: Path) -> None:
    log: list[tuple[str, str]] = []
    threads = [threading.Thread(target=_hold, args=(tmp_path, False, 0.3, log, n), daemon=True) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert [e for _, e in log] == ["in", "in", "out", "out"]


def test_a_quiet_test_waits_for_the_running_one_and_runs_alone(tmp_path: Path) -> None:
    log: list[tuple[str, str]] = []
    running = threading.Event()
    other = threading.Thread(target=_hold, args=(tmp_path, False, 0.4, log, "other", running),
                             daemon=True)
    other.start()
    running.wait(5)
    quiet = threading.Thread(target=_hold, args=(tmp_path, True, 0.4, log, "quiet"), daemon=True)
    quiet.start()
    _until_held(tmp_path / "turnstile")  # the quiet one waits at the turnstile's far side
    # the other worker's next test, asked for while the quiet one waits: it goes after it
    later = threading.Thread(target=_hold, args=(tmp_path, False, 0.1, log, "later"), daemon=True)
    later.start()
    for t in (other, quiet, later):
        t.join(5)
    assert log == [("other", "in"), ("other", "out"), ("quiet", "in"), ("quiet", "out"),
                   ("later", "in"), ("later", "out")]
