"""Nothing leaks: Ctrl-C, SIGKILL then a new run, and a failed start leave no process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentverify.errors import ServiceNotReady, StackError
from agentverify.stack.runstate import terminate_group
from tests.integration.conftest import BACKENDS, CONFIG, make_session, require_backend
from tests.integration.helpers import leftovers, processes_of_run, wait_for_file, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]



@pytest.fixture
def launched(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """`agentverify` child processes of a test; whatever the test's outcome, each is
    stopped (Ctrl-C, then SIGKILL) and what a killed one left is reaped."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        terminate_group(proc, sig=signal.SIGINT, grace=120)  # Ctrl-C, then SIGKILL
        if proc.stdout is not None and not proc.stdout.closed:
            proc.stdout.close()
    env = dict(os.environ, AGENTVERIFY_STATE_DIR=str(tmp_path / "state"))
    subprocess.run([sys.executable, "-m", "agentverify.cli", "reap"], env=env,
                   capture_output=True, timeout=300, check=False)


def launch(argv: list[str], tmp_path: Path,
           launched: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """`agentverify ...` in a session of its own, with Ctrl-C (SIGINT) as a terminal gives
    it: a suite started in the background by a shell (`scripts/test &`) runs with SIGINT
    ignored, which its children would inherit (and rightly ignore the Ctrl-C sent here)."""
    env = dict(os.environ, AGENTVERIFY_STATE_DIR=str(tmp_path / "state"))
    # a handler, not SIG_IGN, while the child is made: exec resets a handler to the default
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "agentverify.cli", *argv],
                                cwd=CONFIG.parent, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    launched.append(proc)
    return proc


def start_up(backend: str, tmp_path: Path,
             launched: list[subprocess.Popen[str]]) -> tuple[subprocess.Popen[str], dict]:
    """`agentverify up` in a child process; returns it and its stack.json."""
    require_backend(backend)
    proc = launch(["up", "--env", "dev", "--backend", backend, "--config", str(CONFIG),
                   "--report-dir", str(tmp_path / "reports")], tmp_path, launched)
    stack = wait_for_file(tmp_path / "reports" / "stack.json", 180, proc)
    return proc, stack


#: on docker, Ctrl-C is rehearsed during a gate run (test_ctrl_c_during_a_gate_run...), and a
#: SIGKILLed `agentverify up` reaped by the next stack and by `agentverify reap` in
#: test_docker_backend.py (which also checks the run's network): not twice here. On local,
#: `agentverify reap` after a SIGKILL is test_a_sigkilled_run_during_load_leaves_nothing...
LOCAL = [p for p in BACKENDS if p.id == "local"]


@pytest.mark.parametrize("backend", LOCAL)
def test_ctrl_c_tears_everything_down(backend: str, tmp_path: Path, launched: list) -> None:
    proc, stack = start_up(backend, tmp_path, launched)
    run_id, run_dir = stack["run_id"], stack["run_dir"]
    assert leftovers(run_id, run_dir), "the stack's processes should be running before Ctrl-C"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "stack is down" in out
    assert "Traceback" not in out
    assert leftovers(run_id, run_dir) == []


@pytest.mark.parametrize("backend", LOCAL)
def test_sigkill_leaves_a_record_the_next_run_reaps(backend: str, tmp_path: Path,
                                                    launched: list) -> None:
    proc, stack = start_up(backend, tmp_path, launched)
    run_id, run_dir = stack["run_id"], stack["run_dir"]
    proc.kill()  # SIGKILL: no teardown can run
    proc.communicate(timeout=30)
    left = leftovers(run_id, run_dir)
    assert left, "after SIGKILL the services are orphaned (else this test proves nothing)"
    if backend == "local":
        # redis-server and nginx overwrite their environment (process title): they must
        # still be recognised as this run's, or the reaper would leave them running
        names = {Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].split(b" ")[0]
                 for p in processes_of_run(run_id, run_dir)}
        assert {b"redis-server", b"nginx:"} <= names, names
    assert (Path(stack["run_dir"]) / "run.json").is_file()

    # the next run reaps them before it starts its own stack
    session = make_session(backend, tmp_path / "reports2", env="dev",
                           state_dir=tmp_path / "state")
    try:
        with session.fresh_stack() as second:
            assert second.run.run_id != run_id
            assert wait_until(lambda: leftovers(run_id, run_dir) == [], 30), \
                leftovers(run_id, run_dir)
    finally:
        session.close()
    assert leftovers(second.run.run_id, second.run.run_dir) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_start_names_the_service_shows_its_log_and_leaks_nothing(
        backend: str, tmp_path: Path) -> None:
    # v1 itself fails its health check: start-up must fail, not hang, and clean up
    session = make_session(backend, tmp_path / "reports", env="dev",
                           state_dir=tmp_path / "state",
                           overrides={"stack.versions": {"v1": {"fail_health": True}},
                                      "stack.start_timeout": 15})
    stack = session.new_stack()
    with pytest.raises(StackError) as info:
        with stack:
            pass
    assert isinstance(info.value, ServiceNotReady)
    message = str(info.value)
    assert "agent-" in message and "not ready after" in message
    assert "GET /health -> 200" in message and "503" in message
    assert stack.run is not None
    assert leftovers(stack.run.run_id, stack.run.run_dir) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_ctrl_c_during_a_gate_run_tears_the_stack_down(backend: str, tmp_path: Path,
                                                       launched: list) -> None:
    require_backend(backend)
    reports = tmp_path / "reports"
    proc = launch(["run", "--env", "dev", "--backend", backend, "--config", str(CONFIG),
                   "--report-dir", str(reports),
                   str(CONFIG.parent / "scenarios" / "rolling_update.yaml")], tmp_path, launched)
    stack = wait_for_file(reports / "stack.json", 180, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the middle of a rollout
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert "tearing the stack down" in out
    assert wait_until(lambda: leftovers(stack["run_id"], stack["run_dir"]) == [], 30), \
        leftovers(stack["run_id"], stack["run_dir"])


@pytest.mark.parametrize("to", ["group", "parent"])
def test_sigterm_during_a_gate_run_tears_the_stack_down(to: str, tmp_path: Path,
                                                        launched: list) -> None:
    """A CI job cancelled with SIGTERM: to its whole process group (GitLab, a runner's
    pod) or to `agentverify run` alone (`kill PID`), the stack goes down as on Ctrl-C.
    Python's default would end pytest on the spot and leave every service running."""
    require_backend("local")
    reports = tmp_path / "reports"
    proc = launch(["run", "--env", "dev", "--backend", "local", "--config", str(CONFIG),
                   "--report-dir", str(reports),
                   str(CONFIG.parent / "scenarios" / "rolling_update.yaml")], tmp_path, launched)
    stack = wait_for_file(reports / "stack.json", 180, proc)
    if to == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 130, out
    assert "tearing the stack down" in out, out
    assert wait_until(lambda: leftovers(stack["run_id"], stack["run_dir"]) == [], 30), \
        leftovers(stack["run_id"], stack["run_dir"])


def test_a_sigkilled_run_during_load_leaves_nothing_after_reap(tmp_path: Path,
                                                               launched: list) -> None:
    """The Locust child and its workers are recorded like every service: a pytest run
    SIGKILLed in the middle of a `load` step with 2 workers leaves nothing after reap."""
    require_backend("local")
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "long_load.yaml").write_text(
        "name: long-load\n"
        "steps:\n"
        "  - load: {users: 4, spawn_rate: 4, duration_s: 120, user_rps: 2, workers: 2}\n"
        "expect:\n  requests: '>= 1'\n")
    reports = tmp_path / "reports"
    proc = launch(["run", "--env", "dev", "--backend", "local", "--config", str(CONFIG),
                   "--report-dir", str(reports), str(scenarios / "long_load.yaml")],
                  tmp_path, launched)
    stack = wait_for_file(reports / "stack.json", 180, proc)
    run_id, run_dir = stack["run_id"], stack["run_dir"]
    record = Path(run_dir) / "run.json"

    def load_recorded() -> list[int]:
        processes = json.loads(record.read_text())["processes"]
        return [p["pgid"] for key, p in processes.items() if key.startswith("load-")]

    pgids = wait_until(load_recorded, 120)
    assert pgids, f"the load child never appeared in the run record {record}"
    # the child and both workers run in the recorded process group, carrying the run id
    assert wait_until(lambda: len([p for p in processes_of_run(run_id, run_dir)
                                   if os.getpgid(p) == pgids[0]]) >= 3, 60), \
        "expected the Locust child and 2 workers in the recorded process group"
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its pytest child: no teardown runs
    proc.communicate(timeout=30)
    assert leftovers(run_id, run_dir), "after SIGKILL the services are orphaned"

    env = dict(os.environ, AGENTVERIFY_STATE_DIR=str(tmp_path / "state"))
    reap = subprocess.run([sys.executable, "-m", "agentverify.cli", "reap"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert reap.returncode == 0, reap.stderr
    assert "reaped" in reap.stdout, reap.stdout
    assert wait_until(lambda: leftovers(run_id, run_dir) == [], 30), leftovers(run_id, run_dir)


def test_closing_the_local_backend_stops_a_recorded_process_the_stack_never_got(
        tmp_path: Path) -> None:
    """A Ctrl-C between a replica's spawn and its handle reaching the stack left the
    process running (seen once in the Ctrl-C test above): closing the backend, the last
    step of a teardown, stops whatever the run record still lists."""
    from agentverify.stack.local import LocalBackend
    from agentverify.stack.runstate import RunContext
    from agentverify.stack.spec import ServiceSpec

    run = RunContext.create("local", state_dir=tmp_path / "state")
    backend = LocalBackend()
    backend.open(run)
    spec = ServiceSpec(name="sleeper", role="job", image="x",
                       command=(sys.executable, "-c", "import time; time.sleep(120)"))
    # the stack never stops this handle, as when a Ctrl-C cut the start short
    proc = backend.start(spec, "sleeper", peers={}).state.proc
    assert leftovers(run.run_id, run.run_dir) != []
    backend.close()
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert leftovers(run.run_id, run.run_dir) == [] and run.processes() == {}


_LEFT_UP = """\
import json, os, sys
from pathlib import Path
from agentverify.session import AgentVerifySession

backend, config, out, state = sys.argv[1:5]
session = AgentVerifySession(env="dev", config_path=config, backend=backend,
                             report_dir=Path(out).parent / "reports", say=print,
                             environ=dict(os.environ, AGENTVERIFY_STATE_DIR=state))
stack = session.new_stack(only=("redis",))
stack.up()
Path(out).write_text(json.dumps({"run_id": stack.run.run_id,
                                 "run_dir": str(stack.run.run_dir)}))
# the script ends without stack.down(): the interpreter's exit must tear the stack down
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_script_that_never_calls_down_leaves_nothing_when_it_exits(
        backend: str, tmp_path: Path) -> None:
    """Stack.up() registers down() to run at interpreter exit. By then no thread pool
    takes work (concurrent.futures shuts down before atexit callbacks run): the stops at
    teardown failed and every service outlived the script, seen on docker."""
    require_backend(backend)
    out = tmp_path / "stack.json"
    proc = subprocess.run([sys.executable, "-c", _LEFT_UP, backend, str(CONFIG), str(out),
                           str(tmp_path / "state")], cwd=CONFIG.parent, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    record = json.loads(out.read_text())
    assert leftovers(record["run_id"], record["run_dir"]) == []
