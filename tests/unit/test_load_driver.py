"""The driver's side of the child protocol, against a scripted stand-in for the child.

The stand-in is a small Python program (no Locust, no server) that the driver starts
exactly as it starts the real child; what it writes is chosen per test with
``FAKE_CHILD_MODE``. These tests prove the early abort, the error paths and that the
whole process group is gone afterwards, even after Ctrl-C in the parent.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from agentverify.errors import LoadTestError
from agentverify.load.driver import BackgroundLoad, LoadDriver
from agentverify.load.plan import LoadPlan
from agentverify.load.stats import Snapshot

FAKE_CHILD = textwrap.dedent("""\
    #!{python}
    import json, os, signal, subprocess, sys, time

    args = sys.argv[sys.argv.index("--stream-fd") + 1]
    out = os.fdopen(int(args), "w", buffering=1)
    mode = os.environ["FAKE_CHILD_MODE"]
    stopped = []
    signal.signal(signal.SIGTERM, lambda *a: stopped.append(1))

    def send(**data):
        out.write(json.dumps(data) + "\\n")

    def snapshot(t, p95=50.0):
        send(type="snapshot", t=t, users=4, requests=int(100 * t), failures=0,
             rps=100.0, interval_rps=100.0, p50_ms=10.0, p95_ms=p95, p99_ms=p95,
             interval_p95_ms=p95)

    def result(by):
        send(type="result", requests=300, failures=0, duration_s=3.0, rps=100.0,
             p50_ms=10.0, p95_ms=50.0, p99_ms=60.0, stopped_by=by)

    if mode == "gone":  # e.g. Locust cannot be imported: gone before the word to go
        print("ModuleNotFoundError: No module named 'locust'", flush=True)
        sys.exit(1)
    # as the real child: ready, then the users start on "go"; end of stdin ends it quietly
    if "--wait-go" in sys.argv and sys.stdin.readline().strip() != "go":
        sys.exit(0)

    if mode == "ok":
        send(type="info", message="2 Locust workers connected")
        for t in (1.0, 2.0, 3.0):
            snapshot(t)
        result("duration")
    elif mode in ("slow", "spend"):
        t = 0.0
        while not stopped:
            t += 1.0
            snapshot(t, p95=5000.0 if mode == "slow" else 50.0)
            time.sleep(0.05)
        result("signal")
    elif mode == "crash":
        print("Traceback: something broke in the child", flush=True)
        sys.exit(3)
    elif mode == "error":
        send(type="error", message="RuntimeError: only 1 of 2 Locust workers connected")
        sys.exit(2)
    elif mode == "garbage":
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        out.write("this is not json\\n")
        time.sleep(30)
    elif mode == "hang":
        # a stand-in for a Locust worker: a grandchild in the same process group
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(os.environ["FAKE_CHILD_PIDS"], "w") as f:
            json.dump([os.getpid(), worker.pid], f)
        snapshot(1.0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a child that will not stop nicely
        time.sleep(120)
""")


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    path = tmp_path / "fake-python"
    path.write_text(FAKE_CHILD.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def _driver(fake_python: str, tmp_path: Path, lines: list[str]) -> LoadDriver:
    plan = LoadPlan(host="http://127.0.0.1:9", prompts=("q?",), duration_s=3.0)
    return LoadDriver(plan, say=lines.append, python=fake_python,
                      log_path=tmp_path / "child.log", progress_interval_s=2.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_run_streams_snapshots_progress_and_the_result(
        fake_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "ok")
    lines: list[str] = []
    seen: list[Snapshot] = []
    run = _driver(fake_python, tmp_path, lines).run(on_snapshot=seen.append)
    assert run.result.requests == 300 and run.result.stopped_by == "duration"
    assert [s.t for s in run.snapshots] == [1.0, 2.0, 3.0] == [s.t for s in seen]
    assert not run.aborted and run.abort_reason is None
    assert run.info == ["2 Locust workers connected"]
    assert run.series("interval_p95_ms") == [[1.0, 50.0], [2.0, 50.0], [3.0, 50.0]]
    # a progress line every progress_interval_s, with users, rate, p95 and errors
    assert [line for line in lines if "load" in line] == [
        "  load    2s: 4 users, 100.0 req/s, p95 50 ms, errors 0 (0.0%), 200 requests"]


def test_an_slo_breach_stops_the_load_and_the_result_still_comes(
        fake_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "slow")
    lines: list[str] = []

    def abort_on(snap: Snapshot) -> str | None:
        return f"p95_ms {snap.p95_ms:.0f} > 800" if snap.t >= 3 else None

    run = _driver(fake_python, tmp_path, lines).run(abort_on=abort_on)
    assert run.aborted and run.abort_reason == "p95_ms 5000 > 800"
    assert run.result.stopped_by == "signal"
    assert "  stopping the load early: p95_ms 5000 > 800" in lines


def test_a_poll_reason_stops_the_load(fake_python: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "spend")
    calls = []

    def poll() -> str | None:
        calls.append(1)
        return "cost $0.02 > budget $0.01" if len(calls) >= 2 else None

    run = _driver(fake_python, tmp_path, []).run(poll=poll)
    assert run.abort_reason == "cost $0.02 > budget $0.01"
    assert len(calls) == 2


@pytest.mark.parametrize(("mode", "message"), [
    ("crash", r"exited \(code 3\) without a result; last output \(.*child.log\):\n"
              r"Traceback: something broke"),
    ("error", "the load could not run: RuntimeError: only 1 of 2 Locust workers connected"),
    ("garbage", "not JSON: 'this is not json'"),
])
def test_child_failures_are_load_test_errors(fake_python: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, mode: str,
                                             message: str) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", mode)
    driver = _driver(fake_python, tmp_path, [])
    with pytest.raises(LoadTestError, match=message):
        driver.run()
    assert driver._proc is not None and driver._proc.poll() is not None


def test_ctrl_c_in_the_parent_stops_the_child_and_its_workers(
        fake_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pids_file = tmp_path / "pids.json"
    monkeypatch.setenv("FAKE_CHILD_MODE", "hang")
    monkeypatch.setenv("FAKE_CHILD_PIDS", str(pids_file))

    def interrupt(snap: Snapshot) -> str | None:
        raise KeyboardInterrupt

    driver = _driver(fake_python, tmp_path, [])
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        driver.run(abort_on=interrupt)
    assert _gone_within(json.loads(pids_file.read_text()), 10)
    assert time.monotonic() - started < 10  # SIGTERM ignored: SIGKILL came after 2 s


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


def test_a_background_load_that_does_not_stop_in_time_is_an_error_and_leaves_nothing(
        fake_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pids_file = tmp_path / "pids.json"
    monkeypatch.setenv("FAKE_CHILD_MODE", "hang")
    monkeypatch.setenv("FAKE_CHILD_PIDS", str(pids_file))
    load = BackgroundLoad(_driver(fake_python, tmp_path, []).start(), name="spike").start()
    deadline = time.monotonic() + 10
    while not pids_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = json.loads(pids_file.read_text())
    with pytest.raises(LoadTestError, match="did not stop within 0.2s"):
        load.stop(timeout=0.2)  # the child ignores SIGTERM: it is still stopping
    assert _gone_within(pids, 2)  # the driver's close killed its group at once
    load.driver.close()  # and its own close, after the run, is a no-op


def test_temporary_files_go_unless_an_error_points_at_the_log(
        fake_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    plan = LoadPlan(host="http://127.0.0.1:9", prompts=("q?",), duration_s=3.0)
    monkeypatch.setenv("FAKE_CHILD_MODE", "ok")
    run = LoadDriver(plan, say=lambda line: None, python=fake_python).run()
    assert run.log_path is None and list(scratch.iterdir()) == []
    monkeypatch.setenv("FAKE_CHILD_MODE", "crash")
    with pytest.raises(LoadTestError) as err:
        LoadDriver(plan, say=lambda line: None, python=fake_python).run()
    (kept,) = scratch.iterdir()
    assert [p.name for p in kept.iterdir()] == ["locust.log"]
    assert str(kept / "locust.log") in str(err.value)


def test_a_started_child_waits_for_the_word_and_a_close_without_a_run_ends_it(
        fake_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "ok")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    plan = LoadPlan(host="http://127.0.0.1:9", prompts=("q?",), duration_s=3.0)
    driver = LoadDriver(plan, say=lambda line: None, python=fake_python).start()
    assert driver._proc is not None
    pid = driver._proc.pid
    time.sleep(0.5)
    assert _alive(pid)  # started, waiting on its stdin: no result without the word
    # stopped by its group id, scheduled in our session (see OWN_PROCESS_GROUP)
    assert os.getpgid(pid) == pid and os.getsid(pid) == os.getsid(0)
    assert list(tmp_path.glob("agentverify-load-*"))
    driver.close()
    driver.close()  # idempotent
    assert not _alive(pid)
    assert not list(tmp_path.glob("agentverify-load-*"))  # its plan and temporary log
    with pytest.raises(LoadTestError, match="has run already"):
        driver.run()


def test_a_child_gone_before_the_word_to_go_is_an_error_with_its_log(
        fake_python: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CHILD_MODE", "gone")
    driver = _driver(fake_python, tmp_path, [])
    driver.start()
    assert driver._proc is not None
    driver._proc.wait(timeout=10)  # gone before run() says go
    with pytest.raises(LoadTestError, match=r"exited \(code 1\) without a result") as info:
        driver.run()
    assert "No module named 'locust'" in str(info.value)


def test_a_child_that_cannot_be_started_is_one_error_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    plan = LoadPlan(host="http://127.0.0.1:9", prompts=("q?",), duration_s=3.0)
    missing = str(tmp_path / "no-such-python")
    with pytest.raises(LoadTestError, match="cannot start the load child .*no-such-python"):
        LoadDriver(plan, say=lambda line: None, python=missing).start()
    assert not list(tmp_path.glob("agentverify-load-*"))
