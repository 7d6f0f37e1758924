"""Unit tests of the docker backend: placeholders, limits, names, error mapping.

No Docker engine is needed: peers are handles whose addresses the backend reads from
their ``extra``, and the SDK client is replaced by a fake where one is touched.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from agentverify.config import load_config
from agentverify.errors import BackendUnavailable, ServiceStartError, StackError
from agentverify.secrets import resolve_api_keys
from agentverify.stack import docker as docker_backend
from agentverify.stack.backend import Backend, Handle, get_backend
from agentverify.stack.docker import (
    ENGINE_DOWN,
    DockerBackend,
    DockerState,
    aliases_for,
    container_name,
    cpu_shares,
    memory_bytes,
    nano_cpus,
    resource_kwargs,
)
from agentverify.stack.placeholders import container_resolver, render_template
from agentverify.stack.runstate import InstanceDirs
from agentverify.stack.spec import StackSpec, build_stack_spec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spec() -> StackSpec:
    config = load_config(REPO / "agentverify.yaml", "staging", environ={})
    return build_stack_spec(config, api_keys=resolve_api_keys(config, {}))


def _handle(backend: DockerBackend, spec: StackSpec, name: str, instance: str | None = None,
            generation: int = 1) -> Handle:
    instance = instance or name
    aliases = aliases_for(spec[name], instance, generation)
    state = DockerState(dirs=InstanceDirs(Path("/b"), Path("/b/conf"), Path("/b/data")), peers={},
                        log=Path("/b/log"), alias=aliases[0], aliases=aliases)
    return Handle(spec=spec[name], instance=instance, generation=generation, backend=backend,
                  state=state)


@pytest.fixture
def peers(spec: StackSpec) -> dict[str, Handle]:
    backend = DockerBackend()
    return {name: _handle(backend, spec, name)
            for name in ("llm", "redis", "milvus", "alertmanager", "prometheus", "lb",
                         "receiver")}


def _render(spec: StackSpec, peers: dict[str, Handle], service: str, text: str,
            instance: str | None = None) -> str:
    backend = DockerBackend()
    handle = _handle(backend, spec, service, instance)
    return backend._render(handle, peers, text)


# ------------------------------------------------------------------ placeholders


def test_own_port_bind_and_paths_resolve_to_the_container_view(spec, peers) -> None:
    argv = [_render(spec, peers, "agent", a, "agent-0") for a in spec["agent"].command]
    assert argv[:3] == ["python3", "-m", "uvicorn"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--port") + 1] == "8000"
    assert _render(spec, peers, "redis", "${port:redis} ${datadir}") == "6379 /agentverify/data"
    assert _render(spec, peers, "lb", "${confdir}/nginx.conf ${user} ${port:http}") == \
        "/agentverify/conf/nginx.conf root 80"


def test_peers_resolve_to_service_aliases_and_container_ports(spec, peers) -> None:
    env = {k: _render(spec, peers, "agent", v, "agent-0")
           for k, v in spec["agent"].env.items()}
    assert env["MILVUS_HOST"] == "milvus"
    assert env["MILVUS_PORT"] == "19530"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["OPENAI_BASE_URL"] == "http://llm:8080/v1"
    assert env["AGENT_CONFIG"] == "/agentverify/conf/config.yaml"
    prom = _render(spec, peers, "prometheus", spec["prometheus"].files["prometheus.yml"])
    assert "alertmanager:9093" in prom and "llm:8080" in prom and "receiver:9095" in prom
    assert "${" not in prom
    assert _render(spec, peers, "agent", "${url:redis} ${host:llm} ${port:milvus:grpc}",
                   "agent-0") == "redis://redis:6379 llm 19530"


def test_agent_replicas_are_addressed_by_their_unique_alias(spec, peers) -> None:
    backend = DockerBackend()
    replica = _handle(backend, spec, "agent", "agent-2", generation=3)
    assert replica.address("http") == ("agent-2-g3", 8000)
    upstream = render_template("${addr:agent}", backend._resolver(
        _handle(backend, spec, "lb"), {**peers, "agent": replica}))
    assert upstream == "agent-2-g3:8000"


def test_unknown_peer_and_placeholder_are_stack_errors(spec, peers) -> None:
    with pytest.raises(StackError, match=r"refers to service 'nope'.*known: \['alertmanager'"):
        _render(spec, peers, "agent", "${addr:nope}", "agent-0")
    with pytest.raises(StackError, match=r"unknown placeholder \$\{bogus\}"):
        _render(spec, peers, "redis", "${bogus}")


def test_container_resolver_takes_any_lookup(spec) -> None:
    resolve = container_resolver(spec["agent"], lambda svc, port: (f"{svc}.dns", 1, "grpc"))
    assert render_template("${url:milvus}|${python}", resolve) == "grpc://milvus.dns:1|python3"


# ------------------------------------------------------------------ names and limits


def test_container_names_and_aliases() -> None:
    assert container_name("20250101-000000-abc123", "agent-1", 2) == \
        "av-20250101-000000-abc123-agent-1-g2"


def test_aliases_service_name_only_for_non_replicated_services(spec) -> None:
    assert aliases_for(spec["redis"], "redis", 1) == ["redis", "redis-g1"]
    assert aliases_for(spec["agent"], "agent-0", 1) == ["agent-0-g1"]
    assert aliases_for(spec["llm"], "llm-canary", 1) == ["llm-canary-g1"]


@pytest.mark.parametrize(("size", "expected"), [
    ("2G", 2 * 1024 ** 3), ("1g", 1024 ** 3), ("512M", 512 * 1024 ** 2),
    ("1.5G", int(1.5 * 1024 ** 3)), ("64k", 65536), ("1000", 1000), (4096, 4096),
    ("2GB", 2 * 1024 ** 3),
])
def test_memory_bytes(size: str | int, expected: int) -> None:
    assert memory_bytes(size) == expected


def test_memory_bytes_rejects_garbage() -> None:
    with pytest.raises(StackError, match="cannot read memory size 'lots'"):
        memory_bytes("lots")


def test_cpu_conversions() -> None:
    assert nano_cpus(1) == 1_000_000_000
    assert nano_cpus(0.5) == 500_000_000
    assert cpu_shares(0.5) == 512
    assert cpu_shares(2) == 2048
    assert cpu_shares(0.0001) == 2  # docker's minimum weight


def test_agent_limits_follow_the_config(spec) -> None:
    assert resource_kwargs(spec["agent"]) == {
        "nano_cpus": 1_000_000_000, "mem_limit": 2 * 1024 ** 3,
        "mem_reservation": 1024 ** 3, "cpu_shares": 512}
    assert resource_kwargs(spec["redis"]) == {}


# ------------------------------------------------------------------ registry, errors


def test_registry_resolves_the_docker_backend_without_an_engine() -> None:
    backend = get_backend("docker")
    assert isinstance(backend, DockerBackend)
    assert isinstance(backend, Backend)
    assert backend.pytest_id() == "docker"
    assert backend.pull is False


def test_engine_available_is_false_without_the_library(monkeypatch) -> None:
    monkeypatch.setattr(docker_backend, "_ENGINE_CACHE", {})
    monkeypatch.setitem(sys.modules, "docker", None)
    assert docker_backend.engine_available() is False


def test_engine_available_is_cached_per_process(monkeypatch) -> None:
    import os

    monkeypatch.setattr(docker_backend, "_ENGINE_CACHE", {os.getpid(): True})
    monkeypatch.setitem(sys.modules, "docker", None)  # would say False if asked again
    assert docker_backend.engine_available() is True


class _FakeImages:
    def get(self, name: str) -> Any:
        import docker.errors

        raise docker.errors.ImageNotFound(f"No such image: {name}")


class _FakeClient:
    images = _FakeImages()


def test_a_missing_image_is_one_line_naming_images_build(spec) -> None:
    backend = DockerBackend()
    backend._client = _FakeClient()  # type: ignore[assignment]
    from dataclasses import replace

    with pytest.raises(BackendUnavailable) as info:
        backend._ensure_image(replace(spec["redis"], image="agentverify/redis:local"))
    assert str(info.value) == (
        "image agentverify/redis:local is missing: run `agentverify images build`, "
        "or name another image in stack.images.redis")
    with pytest.raises(BackendUnavailable, match=r"image redis:7 is missing: pull it "
                       r"\(docker pull redis:7\) or set stack.pull: true"):
        backend._ensure_image(replace(spec["redis"], image="redis:7"))


def test_errors_are_mapped_in_one_place() -> None:
    import docker.errors
    import requests

    with pytest.raises(BackendUnavailable, match=re.escape(ENGINE_DOWN)) as down:
        with docker_backend._docker_errors("listing"):
            raise requests.exceptions.ConnectionError("connection refused")
    assert isinstance(down.value.__cause__, requests.exceptions.ConnectionError)
    with pytest.raises(ServiceStartError) as failed:
        with docker_backend._docker_errors("agent-0: docker could not start x",
                                           error=ServiceStartError,
                                           logs=lambda: "line 1\nexec: not found"):
            raise docker.errors.APIError("500 Server Error", explanation="no such file")
    assert str(failed.value).splitlines()[0] == "agent-0: docker could not start x: no such file"
    assert "exec: not found" in str(failed.value)
    with pytest.raises(StackError, match="waiting: timed out") as slow:
        with docker_backend._docker_errors("waiting"):
            raise requests.exceptions.ReadTimeout("timed out")
    assert not isinstance(slow.value, BackendUnavailable)


def test_a_backend_needs_open_before_start(spec) -> None:
    with pytest.raises(StackError, match=r"before open\(run\)"):
        DockerBackend().start(spec["redis"], "redis", peers={})


class _Registry:
    """A fake engine that has no image until it is pulled."""

    def __init__(self, fail: str | None = None) -> None:
        self.images, self.api = self, self
        self.pulled: list[tuple[str, str]] = []
        self.fail = fail

    def get(self, name: str) -> Any:
        import docker.errors

        repo, _, tag = name.partition(":")
        if (repo, tag) in self.pulled and not self.fail:
            return type("Image", (), {"id": f"sha256:{repo}-{tag}"})()
        raise docker.errors.ImageNotFound(f"No such image: {name}")

    def pull(self, repo: str, tag: str, stream: bool, decode: bool) -> Any:
        self.pulled.append((repo, tag))
        yield {"status": "Pulling from library/redis", "id": "7"}
        for _ in range(3):
            yield {"status": "Downloading", "id": "abc", "progress": "[==>   ]"}
        if self.fail:
            yield {"error": self.fail}
        yield {"status": "Pull complete", "id": "abc"}


def test_pull_only_when_configured_and_show_progress(spec) -> None:
    from dataclasses import replace

    config = load_config(REPO / "agentverify.yaml", "staging", environ={},
                         overrides={"stack.pull": True})
    lines: list[str] = []
    backend = DockerBackend(config, progress=lines.append)
    assert backend.pull is True
    backend._client = registry = _Registry()  # type: ignore[assignment]
    image_id = backend._ensure_image(replace(spec["redis"], image="redis:7"))
    assert registry.pulled == [("redis", "7")]
    assert image_id == "sha256:redis-7"  # containers start from the pinned id
    assert lines == ["pulling redis:7 (stack.pull is true)",
                     "redis:7: 7: Pulling from library/redis",
                     "redis:7: abc: Downloading",  # once per state, not per chunk
                     "redis:7: abc: Pull complete",
                     "pulled redis:7"]
    backend._client = _Registry(fail="manifest unknown")  # type: ignore[assignment]
    with pytest.raises(BackendUnavailable, match="pulling redis:8 failed: manifest unknown"):
        backend._ensure_image(replace(spec["redis"], image="redis:8"))


def test_signal_is_docker_kill_with_the_signals_name(spec, monkeypatch) -> None:
    import signal

    import docker.errors

    class Container:
        def __init__(self, running: bool) -> None:
            self.running, self.sent = running, []

        def kill(self, signal: str | None = None) -> None:
            if not self.running:
                response = type("Response", (), {"status_code": 409, "reason": "Conflict"})()
                raise docker.errors.APIError("Container is not running", response=response)
            self.sent.append(signal)

    backend = DockerBackend()
    handle = _handle(backend, spec, "agent", "agent-1")
    running = Container(True)
    monkeypatch.setattr(backend, "_container", lambda h: running)
    backend.signal(handle, signal.SIGHUP)
    assert running.sent == ["SIGHUP"]
    monkeypatch.setattr(backend, "_container", lambda h: Container(False))
    with pytest.raises(StackError, match="agent-1 is not running: cannot send it SIGUSR1"):
        backend.signal(handle, signal.SIGUSR1)
    monkeypatch.setattr(backend, "_container", lambda h: None)
    with pytest.raises(StackError, match="container is gone"):
        backend.signal(handle, signal.SIGHUP)


def test_reaping_skips_a_container_another_reaper_is_removing(monkeypatch) -> None:
    """Two runs starting at once on one engine both reap a killed run's containers: the
    engine answers the second removal 409 (already in progress); that is not an error."""
    import docker.errors

    from agentverify.stack import docker as docker_mod

    def conflict() -> None:
        response = type("Response", (), {"status_code": 409, "reason": "Conflict"})()
        raise docker.errors.APIError("removal of container x is already in progress",
                                     response=response)

    def gone() -> None:
        raise docker.errors.NotFound("No such container")

    class Container:
        def __init__(self, name: str, remove) -> None:
            self.name, self._remove = name, remove
            self.labels = {"agentverify": "1", "agentverify.owner-pid": "999999999",
                           "agentverify.run": "r1"}

        def remove(self, force: bool = False) -> None:
            self._remove()

    removed: list[str] = []
    containers = [Container("busy", conflict), Container("vanished", gone),
                  Container("mine", lambda: removed.append("mine"))]

    class Client:
        containers = type("C", (), {"list": staticmethod(lambda **kw: containers)})()
        networks = type("N", (), {"list": staticmethod(lambda **kw: [])})()

        def close(self) -> None:
            pass

    monkeypatch.setattr(docker_mod, "engine_available", lambda: True)
    monkeypatch.setattr(docker_mod, "_owner_identity", lambda: {})
    monkeypatch.setattr(docker_mod, "owner_alive", lambda pid, start: False)
    monkeypatch.setattr(docker_mod, "_connect", lambda *a, **kw: Client())
    assert DockerBackend().reap_stale() == ["r1/mine (container)"]
    assert removed == ["mine"]
