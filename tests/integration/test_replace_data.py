"""``Stack.replace_data`` on a real Redis, on every backend.

A one-service stack (redis-server as a process or a container) gets its data replaced
with an RDB file saved earlier: the service is not serving while it is down, comes back
on the same port with the new data, and keeps its old data when the replacement fails.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from agentverify.errors import StackError
from agentverify.stack.backend import get_backend
from agentverify.stack.spec import Port, ServiceSpec, StackSpec
from agentverify.stack.stack import Stack
from agentverify.stack.wait import PortWaitStrategy

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _redis_spec() -> ServiceSpec:
    return ServiceSpec(
        name="redis", role="cache", image="agentverify/redis:local",
        command=("redis-server", "--port", "${port:redis}", "--bind", "${bind}",
                 "--dir", "${datadir}", "--dbfilename", "dump.rdb", "--save", "",
                 "--appendonly", "no", "--protected-mode", "no"),
        ports=(Port("redis", 6379, "redis"),), health=PortWaitStrategy("redis"),
        requires={"redis-server": "redis-server"}, persistent=True, stop_grace=2.0)


@pytest.fixture
def redis_stack(backend_name: str, tmp_path: Path) -> Iterator[Stack]:
    with Stack(StackSpec((_redis_spec(),), env_name="dev"), get_backend(backend_name),
               state_dir=tmp_path / "state") as stack:
        yield stack


def _client(stack: Stack) -> Any:
    return redis.Redis.from_url(stack.service("redis").url(), socket_timeout=10.0)


def _get(stack: Stack, key: str, timeout: float = 20.0) -> bytes | None:
    """GET once Redis has loaded its RDB file (it answers LOADING until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with _client(stack) as client:
                return client.get(key)
        except (redis.BusyLoadingError, redis.ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_replace_data_restarts_on_the_same_port_with_the_new_data(redis_stack: Stack,
                                                                  tmp_path: Path) -> None:
    stack = redis_stack
    old = stack.service("redis")
    data_dir = Path(stack.backend.volume_path(old))
    with _client(stack) as client:
        client.set("k", "old")
        client.save()
        shutil.copyfile(data_dir / "dump.rdb", tmp_path / "old.rdb")
        client.set("k", "new")
        client.save()
    seen: dict[str, Any] = {}

    def populate(directory: Path) -> None:
        seen["dir"] = directory
        seen["listing"] = sorted(os.listdir(directory))
        with pytest.raises(StackError, match="not running"):
            stack.service("redis")
        seen["down"] = old.status().running is False
        shutil.copyfile(tmp_path / "old.rdb", directory / "dump.rdb")
        os.chmod(directory / "dump.rdb", 0o600)  # replace_data makes it readable to all

    new = stack.replace_data("redis", populate, timeout=30.0)

    assert seen == {"dir": data_dir, "listing": [], "down": True}
    assert new is not old and stack.service("redis") is new
    assert new.endpoint() == old.endpoint()
    assert new.status().running
    assert new in stack.instances() and old not in stack.instances()
    assert _get(stack, "k") == b"old"
    assert stat.S_IMODE((data_dir / "dump.rdb").stat().st_mode) & 0o444 == 0o444
    assert sorted(p.name for p in data_dir.parent.iterdir()) == ["data"]  # nothing set aside


def test_a_failed_replacement_keeps_the_previous_data_and_serves_again(
        redis_stack: Stack) -> None:
    stack = redis_stack
    old = stack.service("redis")
    with _client(stack) as client:
        client.set("k", "kept")
        client.save()

    def populate(directory: Path) -> None:
        (directory / "dump.rdb").write_bytes(b"half an RDB file")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        stack.replace_data("redis", populate, timeout=30.0)

    again = stack.service("redis")
    assert again is not old and again.status().running
    assert again.endpoint() == old.endpoint()
    assert _get(stack, "k") == b"kept"
    data_dir = Path(stack.backend.volume_path(again))
    assert sorted(p.name for p in data_dir.parent.iterdir()) == ["data"]


@pytest.mark.parametrize("dbfilename", ["dump.rdb", "other.rdb"])
def test_a_redis_prepared_with_an_rdb_file_starts_on_it_or_is_refused(
        backend_name: str, tmp_path: Path, dbfilename: str) -> None:
    """``Stack.prepare`` (what ``restore_on_start`` uses): the file is in place before
    Redis first starts, so it serves the data with no restart; a Redis that reads
    another file would start empty, and the restore's check says so."""
    from agentverify.backup.redis import RDB_NAME, check_rdb_loaded
    from agentverify.errors import BackupRestoreError

    # an RDB file with one key, written by a real Redis
    with Stack(StackSpec((_redis_spec(),), env_name="dev"), get_backend(backend_name),
               state_dir=tmp_path / "state") as source:
        with _client(source) as client:
            client.set("k", "archived")
            client.save()
        shutil.copyfile(source.data_path("redis") / "dump.rdb", tmp_path / "archived.rdb")

    spec = _redis_spec()
    command = tuple(dbfilename if a == "dump.rdb" else a for a in spec.command)
    stack = Stack(StackSpec((replace(spec, command=command),), env_name="dev"),
                  get_backend(backend_name), state_dir=tmp_path / "state")
    starts: list[str] = []

    def place(directory: Path) -> None:
        starts.append(f"placed, {len(stack.instances())} started")
        shutil.copyfile(tmp_path / "archived.rdb", directory / RDB_NAME)

    outcome: dict[str, Any] = {}

    def check(handle: Any) -> None:
        try:
            check_rdb_loaded(handle.url(), timeout=20.0)
            outcome["checked"] = "loaded"
        except BackupRestoreError as exc:
            outcome["checked"] = str(exc)

    stack.prepare("redis", data=place, ready=check)
    with stack:
        assert starts == ["placed, 0 started"]
        assert len([h for h in stack.instances() if h.spec.name == "redis"]) == 1
        if dbfilename == RDB_NAME:
            assert outcome["checked"] == "loaded"
            assert _get(stack, "k") == b"archived"
        else:
            assert "reads 'other.rdb' at start, not 'dump.rdb'" in outcome["checked"]
            assert _get(stack, "k") is None  # what a restore not checked would miss
