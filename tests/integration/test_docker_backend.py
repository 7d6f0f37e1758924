"""The docker backend on the real engine: the staging stack in containers, and the backend
contract (restart, kill, exec, jobs, files) on small services of its own.

Nothing is pulled: the images are the ones `agentverify images build` made. Everything a
test starts is labelled with its run id and removed by that label if the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentverify.errors import ServiceStartError, StackError
from agentverify.stack.docker import DockerBackend
from agentverify.stack.runstate import RunContext
from agentverify.stack.spec import Port, ServiceSpec, StackSpec
from agentverify.stack.stack import Stack
from agentverify.stack.wait import HttpWaitStrategy, PortWaitStrategy

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "agentverify.yaml"
pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: run a test on the shared staging stack of the docker backend only
on_docker = pytest.mark.parametrize(
    "backend_name", [pytest.param("docker", id="docker", marks=pytest.mark.docker)],
    indirect=True)
needs_docker = pytest.mark.docker
SERVICES = {"llm", "redis", "milvus", "alertmanager", "prometheus", "lb", "toxiproxy", "receiver"}


@pytest.fixture(scope="module")
def client(docker_client: Any) -> Any:
    return docker_client


def _of_run(client: Any, run_id: str) -> tuple[list[Any], list[Any]]:
    flt = {"label": f"agentverify.run={run_id}"}
    return client.containers.list(all=True, filters=flt), client.networks.list(filters=flt)


def _remove_run(client: Any, run_id: str) -> None:
    """Test clean-up of OUR run only, by its label."""
    containers, networks = _of_run(client, run_id)
    for c in containers:
        c.remove(force=True)
    for n in networks:
        n.remove()


# ------------------------------------------------------------------ the staging stack


@on_docker
def test_every_container_is_labelled_and_published_on_loopback_only(stack: Stack,
                                                                    client: Any) -> None:
    run_id = stack.run.run_id
    containers, _ = _of_run(client, run_id)
    by_instance = {c.labels["agentverify.instance"]: c for c in containers}
    assert set(by_instance) >= SERVICES | {"agent-0", "agent-1", "agent-2"}
    assert "ingest" not in by_instance  # the job's container is gone once it finished
    for instance, c in by_instance.items():
        assert c.labels["agentverify"] == "1"
        assert c.labels["agentverify.owner-pid"] == str(os.getpid())
        assert c.name.startswith(f"av-{run_id}-{instance}-g")
        bindings = [b for port in (c.attrs["HostConfig"]["PortBindings"] or {}).values()
                    for b in port or []]
        published = [b for port in (c.attrs["NetworkSettings"]["Ports"] or {}).values()
                     for b in port or []]
        assert bindings and published, instance
        assert {b["HostIp"] for b in bindings + published} == {"127.0.0.1"}, instance


@on_docker
def test_agent_containers_carry_the_configured_limits(stack: Stack, client: Any) -> None:
    for replica in stack.replicas:
        host = client.containers.get(replica.handle.state.name).attrs["HostConfig"]
        assert host["NanoCpus"] == 1_000_000_000
        assert host["Memory"] == 2 * 1024 ** 3
        assert host["MemoryReservation"] == 1024 ** 3
        assert host["CpuShares"] == 512
    redis = client.containers.get(stack.service("redis").state.name).attrs["HostConfig"]
    assert redis["NanoCpus"] == 0 and redis["Memory"] == 0


@on_docker
def test_one_network_per_run_with_dns_aliases(stack: Stack, client: Any) -> None:
    run_id = stack.run.run_id
    _, networks = _of_run(client, run_id)
    assert [n.name for n in networks] == [f"agentverify-{run_id}"]
    net = networks[0].name
    aliases = {}
    for h in stack.instances():
        attrs = client.containers.get(h.state.name).attrs
        assert list(attrs["NetworkSettings"]["Networks"]) == [net]
        aliases[h.name] = set(attrs["NetworkSettings"]["Networks"][net]["Aliases"] or [])
    assert {"redis", "redis-g1"} <= aliases["redis"]
    assert {"lb", "lb-g1"} <= aliases["lb"]
    assert "agent-0-g1" in aliases["agent-0"] and "agent" not in aliases["agent-0"]
    # the names resolve inside the network
    res = stack.backend.exec(stack.replicas[0].handle, [
        "python3", "-c", "import socket; print(socket.gethostbyname('redis'), "
                         "socket.gethostbyname('agent-2-g1'))"])
    assert res.ok, res.output
    assert len(res.output.split()) == 2


def test_stack_json_has_the_same_shape_on_every_backend(stack: Stack) -> None:
    data = stack.to_json()
    assert set(data) == {"backend", "env", "run_id", "run_dir", "services"}
    assert (data["backend"], data["env"]) == (stack.backend.name, "staging")
    assert set(data["services"]) == SERVICES | {"agent-0", "agent-1", "agent-2"}
    for name, info in data["services"].items():
        expected = {"url", "version"} if name.startswith("agent-") else \
            {"url", "implementation"} if name == "toxiproxy" else {"url"}
        assert set(info) == expected, name
        assert info["url"].split("://")[1].startswith("127.0.0.1:"), info
    assert data["services"]["redis"]["url"].startswith("redis://")
    assert Path(data["run_dir"]).is_dir()


@on_docker
def test_chat_through_nginx(stack: Stack) -> None:
    resp = httpx.post(f"{stack.lb_url}/chat", json={"message": "How do refunds work?"},
                      timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["answer"]


@on_docker
def test_prometheus_scrapes_replicas_through_file_sd(stack: Stack) -> None:
    """targets/agents.json is renamed into place on the host; Prometheus sees it inside."""
    prom = stack.service("prometheus").url("http")
    # replicas go by their address on the run's network (see DockerBackend.address)
    want = {"%s:%d" % r.handle.address("http") for r in stack.replicas}
    assert all(not host.startswith("agent-") for host, _ in
               (r.handle.address("http") for r in stack.replicas))
    deadline = time.monotonic() + 60
    seen: set[str] = set()
    while time.monotonic() < deadline:
        targets = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]
        seen = {t["labels"]["instance"] for t in targets["activeTargets"]
                if t["labels"]["job"] == "ai-agent" and t["health"] == "up"}
        if want <= seen:
            break
        time.sleep(0.5)
    assert want <= seen


@on_docker
def test_scale_to_4_reloads_nginx_onto_the_new_replica(stack: Stack) -> None:
    try:
        stack.scale(4)
        new = stack.replicas[-1]
        assert new.instance == "agent-3"
        host, port = new.handle.address("http")
        assert port == 8000 and host == new.handle.state.ip and host
        seen: set[str] = set()
        deadline = time.monotonic() + 30
        while "agent-3" not in seen and time.monotonic() < deadline:
            # a fresh connection each time, so nginx's round robin moves on
            resp = httpx.get(f"{stack.lb_url}/version", headers={"Connection": "close"},
                             timeout=10)
            assert resp.status_code == 200
            seen.add(resp.headers["x-agent-replica"])
        assert "agent-3" in seen, seen
        prom = stack.service("prometheus").url("http")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            targets = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]
            if any(t["labels"]["instance"] == f"{host}:8000"
                   for t in targets["activeTargets"]):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"Prometheus never saw agent-3 ({host}) in targets/agents.json")
    finally:
        stack.scale(3)
    assert [r.instance for r in stack.replicas] == ["agent-0", "agent-1", "agent-2"]


@needs_docker
def test_a_missing_image_is_one_line_naming_images_build(tmp_path: Path, client: Any) -> None:
    env = {**os.environ, "AGENTVERIFY_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.run(
        [sys.executable, "-m", "agentverify.cli", "up", "--backend", "docker", "--env", "dev",
         "--config", str(CONFIG), "--report-dir", str(tmp_path / "reports"),
         "--set", "stack.images.redis=agentverify/no-such-image:missing"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "agentverify: BackendUnavailable: image agentverify/no-such-image:missing is "
        "missing: run `agentverify images build`, or name another image in "
        "stack.images.redis"]
    for run in (tmp_path / "state" / "runs").iterdir():
        containers, networks = _of_run(client, run.name)
        assert containers == [] and networks == [], run.name


# ------------------------------------------------------------------ reaping


def _up_then_sigkill(tmp_path: Path, client: Any) -> str:
    """Start `agentverify up` in a child, wait for its stack.json, SIGKILL it."""
    reports = tmp_path / "reports"
    env = {**os.environ, "AGENTVERIFY_STATE_DIR": str(tmp_path / "state")}
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentverify.cli", "up", "--backend", "docker", "--env", "dev",
         "--config", str(CONFIG), "--report-dir", str(reports)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not (reports / "stack.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"agentverify up did not write stack.json:\n"
                            f"{(tmp_path / 'up.log').read_text()[-3000:]}")
            time.sleep(0.2)
        run_id = json.loads((reports / "stack.json").read_text())["run_id"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return run_id


@needs_docker
def test_sigkilled_run_is_reaped_by_agentverify_reap(tmp_path: Path, client: Any) -> None:
    run_id = _up_then_sigkill(tmp_path, client)
    try:
        containers, networks = _of_run(client, run_id)
        assert len(containers) >= 8, "the killed run's containers should outlive it"
        assert all(c.status == "running" for c in containers)
        assert [n.name for n in networks] == [f"agentverify-{run_id}"]
        env = {**os.environ, "AGENTVERIFY_STATE_DIR": str(tmp_path / "state")}
        proc = subprocess.run([sys.executable, "-m", "agentverify.cli", "reap"], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert _of_run(client, run_id) == ([], [])
    finally:
        _remove_run(client, run_id)


@needs_docker
def test_sigkilled_run_is_reaped_by_the_next_stack_up(tmp_path: Path, client: Any) -> None:
    run_id = _up_then_sigkill(tmp_path, client)
    try:
        assert _of_run(client, run_id)[0], "the killed run's containers should outlive it"
        with Stack(StackSpec((_redis_spec(),), env_name="dev"), DockerBackend(),
                   state_dir=tmp_path / "state") as stack:
            assert stack.service("redis").status().running
            assert _of_run(client, run_id) == ([], [])
    finally:
        _remove_run(client, run_id)


# ------------------------------------------------------------------ the backend contract


def _redis_spec(**kw: Any) -> ServiceSpec:
    return ServiceSpec(
        name="redis", role="cache", image="agentverify/redis:local",
        command=("redis-server", "--port", "${port:redis}", "--bind", "${bind}",
                 "--dir", "${datadir}", "--save", "", "--appendonly", "no",
                 "--protected-mode", "no"),
        ports=(Port("redis", 6379, "redis"),), health=PortWaitStrategy("redis"),
        persistent=True, stop_grace=2.0, **kw)


def _web_spec(**kw: Any) -> ServiceSpec:
    fields: dict[str, Any] = {
        "files": {"index.html": "hello from ${host:redis}:${port:redis:redis}\n"},
        "depends_on": ("redis",), "stop_grace": 1.0, **kw}
    return ServiceSpec(
        name="web", role="web", image="agentverify/python:local",
        command=("${python}", "-m", "http.server", "${port:http}", "--bind", "${bind}",
                 "--directory", "${confdir}"),
        ports=(Port("http", 8000),), health=HttpWaitStrategy("http", "/index.html"),
        **fields)


@pytest.fixture
def backend(tmp_path: Path, client: Any) -> Iterator[DockerBackend]:
    be = DockerBackend()
    run = RunContext.create("docker", state_dir=tmp_path / "state")
    be.open(run)
    try:
        yield be
    finally:
        be.close()
        assert _of_run(client, run.run_id) == ([], []), "close() must leave nothing"


@needs_docker
def test_restart_keeps_host_ports_data_and_files(backend: DockerBackend) -> None:
    redis = backend.start(_redis_spec(files={"note.txt": "as rendered"}), "redis", peers={})
    redis.spec.health.wait_until_ready(redis)
    port = redis.endpoint("redis")
    assert port[0] == "127.0.0.1"
    assert backend.exec(redis, ["redis-cli", "-p", "${port:redis}", "set", "k", "v1"]).ok
    assert backend.exec(redis, ["redis-cli", "-p", "${port:redis}", "save"]).ok
    assert (backend.volume_path(redis) / "dump.rdb").is_file()  # a real host path
    backend.write_file(redis, "note.txt", "as written later")
    again = backend.restart(redis, peers={})
    again.spec.health.wait_until_ready(again)
    assert again.endpoint("redis") == port
    assert backend.exec(again, ["cat", "${confdir}/note.txt"]).output == "as written later"
    res = backend.exec(again, ["redis-cli", "-p", "${port:redis}", "get", "k"])
    assert res.output.strip() == "v1"
    backend.stop(again)


@needs_docker
def test_files_are_rendered_on_the_host_and_renames_are_seen_inside(
        backend: DockerBackend) -> None:
    redis = backend.start(_redis_spec(), "redis", peers={})
    web = backend.start(_web_spec(), "web", peers={"redis": redis})
    web.spec.health.wait_until_ready(web)
    resp = httpx.get(web.url("http") + "/index.html", timeout=5)
    assert resp.text == "hello from redis:6379\n"
    conf = web.state.dirs.conf
    for text in ("one", "two", "three"):  # each write is a rename onto a new inode
        backend.write_file(web, "targets/t.json", text)
        assert (conf / "targets" / "t.json").read_text() == text
        res = backend.exec(web, ["cat", "${confdir}/targets/t.json"])
        assert res.output == text
    backend.stop(web)
    backend.stop(redis)


@needs_docker
def test_kill_status_logs_and_idempotent_stop(backend: DockerBackend) -> None:
    web = backend.start(_web_spec(depends_on=(), files={"index.html": "x"}), "web",
                        peers={})
    web.spec.health.wait_until_ready(web)
    httpx.get(web.url("http") + "/index.html", timeout=5)
    assert backend.status(web).running
    backend.kill(web)
    status = backend.status(web)
    assert not status.running and status.exit_code == 137
    assert "GET /index.html" in backend.logs(web, 20)
    backend.kill(web)  # idempotent
    backend.stop(web)
    # the exit status outlives the container (a killed one stays 137)
    assert str(backend.status(web)) == "exited (code 137): container removed"
    assert "GET /index.html" in backend.logs(web, 20)  # kept in the run directory
    backend.stop(web)  # idempotent


@needs_docker
def test_exec_returns_exit_codes_and_times_out(backend: DockerBackend) -> None:
    redis = backend.start(_redis_spec(), "redis", peers={})
    res = backend.exec(redis, ["sh", "-c", "echo $AGENTVERIFY_INSTANCE; exit 4"])
    assert res.exit_code == 4 and res.output.strip() == "redis"
    slow = backend.exec(redis, ["sleep", "5"], timeout=0.5)
    assert slow.exit_code == -1 and "timed out" in slow.output
    backend.stop(redis, grace=0)


@needs_docker
def test_jobs_run_to_completion_and_leave_nothing(backend: DockerBackend,
                                                  client: Any) -> None:
    job = ServiceSpec(name="job", role="job", kind="job", image="agentverify/python:local",
                      command=("${python}", "-c", "print('hello job'); raise SystemExit(3)"))
    res = backend.run_job(job, "job", peers={}, timeout=60)
    assert res.exit_code == 3 and "hello job" in res.output
    hung = ServiceSpec(name="hung", role="job", kind="job", image="agentverify/python:local",
                       command=("sleep", "60"))
    res = backend.run_job(hung, "hung", peers={}, timeout=1)
    assert res.exit_code == -1 and "timed out after 1s" in res.output
    containers, _ = _of_run(client, backend.run.run_id)
    assert containers == []


@needs_docker
def test_a_command_that_cannot_run_fails_with_its_log(backend: DockerBackend) -> None:
    bad = ServiceSpec(name="bad", role="web", image="agentverify/python:local",
                      command=("no-such-binary", "--flag"), ports=(Port("http", 80),),
                      health=PortWaitStrategy("http").with_timeout(30))
    with pytest.raises(ServiceStartError, match="no-such-binary"):
        handle = backend.start(bad, "bad", peers={})
        bad.health.wait_until_ready(handle)


@needs_docker
def test_unknown_port_is_a_stack_error(backend: DockerBackend) -> None:
    redis = backend.start(_redis_spec(), "redis", peers={})
    with pytest.raises(StackError, match="has no port 'http'"):
        redis.endpoint("http")
    backend.stop(redis, grace=0)
