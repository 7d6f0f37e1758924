"""``agentverify images build`` against the real Docker engine, with no registry.

Builds (or finds) the base and runtime images, checks every default role tag points at
the runtime image, runs each server the stack uses from it in a real container, then
proves a second build with nothing changed is fast and builds nothing.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agentverify.config import Config, load_config
from agentverify.errors import BackendUnavailable
from agentverify.images import build_images, configured_images, ensure_images, images_present
from agentverify.images.wheels import _SOURCE_TOP
from agentverify.stack.spec import DEFAULT_IMAGES

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
RUN_LABEL = f"test-images-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def project_snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen copy of the sources: edits made by others during the test must not turn
    the 'nothing changed' build into a rebuild."""
    from agentverify.images import source_hash

    snap = tmp_path_factory.mktemp("project")
    # every file the source hash covers: the role tags this build moves must still
    # match the checkout, or later docker runs would (rightly) call the images stale
    for name in _SOURCE_TOP:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, snap / name)
    shutil.copytree(ROOT / "src", snap / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    assert source_hash(snap) == source_hash(ROOT), "the snapshot must equal the checkout"
    return snap


@pytest.fixture(scope="module")
def default_config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Built-in defaults: the image names of spec.DEFAULT_IMAGES, whatever the repo's
    agentverify.yaml says today."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        return load_config(environ={})


@pytest.fixture(scope="module")
def first_build(docker_client: Any, default_config: Config,
                project_snapshot: Path) -> dict[str, Any]:
    lines: list[str] = []
    start = time.monotonic()
    try:
        report = build_images(default_config, progress=lines.append,
                              project_dir=project_snapshot)
    except BackendUnavailable as exc:
        pytest.fail(f"{exc}", pytrace=False)
    return {"report": report, "lines": lines, "seconds": time.monotonic() - start}


def _run(client: Any, image: str, command: list[str]) -> tuple[int, str]:
    container = client.containers.run(
        image, command, detach=True, network_disabled=True,
        labels={"agentverify": "1", "agentverify.run": RUN_LABEL})
    try:
        result = container.wait(timeout=60)
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        return int(result["StatusCode"]), output
    finally:
        container.remove(force=True)


def test_role_tags_point_at_the_runtime_image(docker_client: Any, first_build: dict[str, Any],
                                             default_config: Config) -> None:
    report = first_build["report"]
    print("\n".join(first_build["lines"]))
    print(f"first build: {first_build['seconds']:.1f}s")
    assert report.runtime and report.runtime.startswith("agentverify/runtime:")
    runtime = docker_client.images.get(report.runtime)
    assert runtime.id == report.runtime_id
    assert runtime.labels["agentverify.image"] == "runtime"
    assert runtime.labels["agentverify.content-hash"] == report.runtime.split(":")[1]
    for name in sorted(set(DEFAULT_IMAGES.values())):
        assert docker_client.images.get(name).id == runtime.id, name
    assert set(report.roles) == set(configured_images(default_config))
    assert set(report.roles.values()) == {runtime.id}
    assert images_present(default_config) == []
    base = docker_client.images.get(report.base)
    assert base.labels["agentverify.image"] == "base"


@pytest.mark.parametrize(("command", "expected"), [
    (["redis-server", "--version"], "Redis server v=7.0"),
    (["nginx", "-v"], "nginx/1.22"),
    (["prometheus", "--version"], "prometheus, version 2.42"),
    (["prometheus-alertmanager", "--version"], "alertmanager, version 0.25"),
    (["python3", "-c", "import agentverify, milvus_lite, fastapi, uvicorn, redis, pymilvus; "
      "print('imports ok', agentverify.__file__)"], "imports ok /opt/agentverify/"),
    (["python", "-m", "milvus_lite", "--help"], "server"),
    (["python3", "-m", "uvicorn", "--version"], "Running uvicorn"),
], ids=["redis", "nginx", "prometheus", "alertmanager", "python-imports", "milvus-lite",
        "uvicorn"])
def test_servers_run_from_the_image(docker_client: Any, first_build: dict[str, Any],
                                    command: list[str], expected: str) -> None:
    code, output = _run(docker_client, first_build["report"].runtime, command)
    assert code == 0, output
    assert expected in output


def test_second_build_with_nothing_changed_builds_nothing(
        first_build: dict[str, Any], default_config: Config, project_snapshot: Path) -> None:
    lines: list[str] = []
    start = time.monotonic()
    report = build_images(default_config, progress=lines.append, project_dir=project_snapshot)
    seconds = time.monotonic() - start
    print("\n".join(lines))
    assert report.built == [], lines
    assert report.tagged == [], lines
    assert report.runtime == first_build["report"].runtime
    assert f"base image {report.base}: present" in "\n".join(lines)
    assert f"runtime image {report.runtime}: present" in lines
    assert not any("built in" in line or "debootstrap" in line for line in lines)
    assert seconds < 15.0, f"a no-op build took {seconds:.1f}s"
    roles = ensure_images(default_config, progress=lines.append, project_dir=project_snapshot)
    assert set(roles.values()) == {first_build["report"].runtime_id}
