"""Integration fixtures: the real stack, parametrized over every backend.

A test that takes ``stack`` runs once per backend (``test_x[local]``, ``test_x[docker]``),
against real processes or real containers. A missing server or engine FAILS with what
to install; nothing here skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentverify.session import AgentVerifySession
from agentverify.stack.backend import backend_names

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "agentverify.yaml"
#: every backend of the registry (a backend that needs an engine carries its marker)
BACKENDS = [pytest.param(name, id=name, marks=[getattr(pytest.mark, name)]
                         if name == "docker" else [])
            for name in backend_names()]

#: for a test whose subject does not depend on where the stack runs (scenario logic, load
#: shapes, gate arithmetic): it runs on the local backend only. What the docker backend
#: does differently (containers, networks and aliases, signals, bind mounts, restarts) is
#: covered by the tests that keep both backends; running the rest twice doubled the suite.
LOCAL_ONLY = pytest.mark.parametrize("backend_name",
                                     [p for p in BACKENDS if p.id == "local"], indirect=True)

_LOCAL_BINARIES = {"redis-server": "redis-server", "nginx": "nginx-light",
                   "prometheus": "prometheus", "prometheus-alertmanager": "prometheus-alertmanager"}


def require_local_binaries() -> None:
    missing = [f"{b} (apt-get install {p})" for b, p in _LOCAL_BINARIES.items()
               if shutil.which(b) is None]
    if missing:
        pytest.fail("the local backend needs: " + ", ".join(missing) +
                    " — scripts/bootstrap installs them", pytrace=False)


def require_docker() -> None:
    if shutil.which("docker") is None:
        pytest.fail("the docker backend needs the Docker engine: apt-get install docker.io "
                    "and start dockerd (scripts/bootstrap does both)", pytrace=False)
    proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.fail("the Docker engine does not answer: start dockerd "
                    "(scripts/bootstrap does it)", pytrace=False)


def require_backend(name: str) -> None:
    if name == "docker":
        require_docker()
    else:
        require_local_binaries()


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run records of this test session live apart from a developer's own runs."""
    path = tmp_path_factory.mktemp("agentverify-state")
    os.environ["AGENTVERIFY_STATE_DIR"] = str(path)
    return path


def make_session(backend: str, report_dir: Path, *, env: str = "staging",
                 overrides: dict[str, Any] | None = None, state_dir: Path | None = None,
                 environ: dict[str, str] | None = None) -> AgentVerifySession:
    require_backend(backend)
    environ = dict(os.environ if environ is None else environ)
    if state_dir is not None:
        environ["AGENTVERIFY_STATE_DIR"] = str(state_dir)
    return AgentVerifySession(env=env, config_path=str(CONFIG), backend=backend,
                              overrides=overrides, report_dir=report_dir, environ=environ,
                              say=lambda line: print(f"agentverify: {line}"))


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    """A docker SDK client; fails (never skips) when no engine answers."""
    require_docker()
    import docker

    client = docker.from_env(timeout=120)
    yield client
    client.close()


@pytest.fixture(scope="session", params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


@pytest.fixture(scope="session")
def av_session(backend_name: str, state_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentVerifySession]:
    """A session on the shared staging stack of one backend (started on first use)."""
    os.environ["AGENTVERIFY_STATE_DIR"] = str(state_dir)
    session = make_session(backend_name, tmp_path_factory.mktemp(f"reports-{backend_name}"),
                           state_dir=state_dir)
    yield session
    session.close()


@pytest.fixture(scope="session")
def stack(av_session: AgentVerifySession) -> Any:
    """The shared staging stack (3 replicas) on the current backend."""
    return av_session.stack()
