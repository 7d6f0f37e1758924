"""A pytest run that only has unit tests never asks a Docker engine anything.

``auto`` is resolved when the first stack is made, not when the plugin configures
itself: before that, every pytest run in a directory with agentverify.yaml pinged the
engine (seconds when it is down, and a call to a daemon a unit run has no business with).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: the unit modules that load the config, make sessions, stacks and scenario runs (the
#: whole unit suite takes a minute more and reaches nothing these do not)
UNIT_RUN = [f"tests/unit/{m}.py" for m in ("test_config", "test_stack_unit", "test_runner_unit",
                                             "test_scenario_schema", "test_report_runner")]


def test_a_unit_run_beside_agentverify_yaml_makes_no_engine_call(tmp_path: Path) -> None:
    assert (REPO / "agentverify.yaml").is_file(), "the repository's own config is the point"
    sock_path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(16)
    server.settimeout(0.2)
    calls: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:  # a fake engine that only records who knocked
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    calls.append(conn.recv(200))
                except OSError:
                    calls.append(b"")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock_path}")
    env.pop("AGENTVERIFY_BACKEND", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", *UNIT_RUN, "-q", "-x",
                               "-p", "no:cacheprovider"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
    assert calls == [], f"the unit run called the engine {len(calls)} time(s): {calls[:3]}"
