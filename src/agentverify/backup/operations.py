"""Backup, restore and verify a whole running stack: the Redis and Milvus parts together.

What is here: :func:`backup_stack` (both parts into one ``backup_<UTC>.tar.gz``, read
back before it is called done), :func:`restore_into` (a verified archive into a running
stack), :func:`restore_on_start` (a stack about to start, started on the archive),
:func:`compare_with` (a restored stack measured against the archive),
:func:`live_fingerprint` (what must not change when a restore is refused) and
:func:`service_name` (the stack's service of a role).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentverify.backup.archive import OpenedBackup, read_archive, write_archive
from agentverify.backup.comparison import Comparison
from agentverify.backup.milvus import (
    backup_milvus,
    compare_milvus,
    count_entities,
    milvus_session,
    restore_milvus,
)
from agentverify.backup.redis import (
    backup_redis,
    check_rdb_loaded,
    compare_redis,
    connect_redis,
    place_rdb,
    restore_redis,
    snapshot_redis,
)
from agentverify.errors import BackupRestoreError

__all__ = ["PARTS", "BackupResult", "backup_stack", "compare_with", "live_fingerprint",
           "restore_into", "restore_on_start", "service_name"]

Say = Callable[[str], None]


def _quiet(line: str) -> None:
    return None


def service_name(stack: Any, role: str) -> str:
    """The name of the stack's service with ``role`` (``cache``, ``vector_store``)."""
    services = stack.spec.by_role(role)
    if not services:
        raise BackupRestoreError(f"the stack has no {role} service to back up or restore")
    return str(services[0].name)


def _timestamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ")


def _archive_path(directory: Path, now: datetime) -> Path:
    base = f"backup_{_timestamp(now)}"
    path = directory / f"{base}.tar.gz"
    n = 2
    while path.exists():
        path = directory / f"{base}-{n}.tar.gz"
        n += 1
    return path


@dataclass
class BackupResult:
    """What :func:`backup_stack` wrote."""

    path: Path
    manifest: dict[str, Any]
    seconds: float

    @property
    def archive_bytes(self) -> int:
        return self.path.stat().st_size

    @property
    def redis_keys(self) -> int:
        return int(self.manifest["redis"]["keys"])

    @property
    def entities(self) -> int:
        return sum(int(c["entities"]) for c in self.manifest["milvus"]["collections"].values())


def backup_stack(stack: Any, directory: Path, *, say: Say = _quiet, search_queries: int = 5,
                 search_limit: int = 5, workdir: Path | None = None) -> BackupResult:
    """Back up a running stack's Redis and Milvus into ``directory/backup_<UTC>.tar.gz``.

    Args:
        stack: a running :class:`~agentverify.stack.stack.Stack` (any backend).
        directory: where the archive goes (created if missing).
        say: progress lines.
        search_queries: fixed queries per collection whose results the manifest records
            (the stored vectors of evenly spaced entities).
        search_limit: hits per query.

    Raises:
        BackupRestoreError: a part could not be read or the archive written.
    """
    t0 = time.monotonic()
    now = datetime.now(UTC)
    redis_handle = stack.service(service_name(stack, "cache"))
    milvus_handle = stack.service(service_name(stack, "vector_store"))
    staging = Path(tempfile.mkdtemp(prefix="agentverify-backup-", dir=workdir))
    try:
        redis_part = backup_redis(redis_handle.url(),
                                  stack.data_path(redis_handle.spec.name), staging, say)
        say(f"  redis: SAVE, dump.rdb and {redis_part['keys']} key record(s)")
        milvus_part, search = backup_milvus(milvus_handle.url(), staging, say,
                                            search_queries, search_limit)
        manifest = {
            "created": now.isoformat().replace("+00:00", "Z"),
            "source": {"env": getattr(stack.spec, "env_name", ""),
                       "backend": stack.backend_name,
                       "run_id": stack.run.run_id if getattr(stack, "run", None) else None},
            "redis": redis_part,
            "milvus": milvus_part,
            "search": search,
        }
        path = write_archive(staging, _archive_path(directory, now), manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # read back what was written: a backup that cannot be restored is no backup
    written = read_archive(path)
    return BackupResult(path, written, time.monotonic() - t0)


#: the parts of a backup, in the order they are restored
PARTS = ("redis", "milvus")


def restore_into(stack: Any, backup: OpenedBackup, *, say: Say = _quiet,
                 batch_size: int = 512, timeout: float = 60.0,
                 parts: tuple[str, ...] | list[str] = PARTS) -> float:
    """Restore a verified backup into a running stack; returns the seconds taken.

    Redis is stopped, given the RDB file and started again (same ports and data
    directory); each Milvus collection is dropped, recreated with the archived schema
    and indexes, and refilled in batches. ``parts`` restores only some (a runbook that
    leaves one out is rehearsed as broken).
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise BackupRestoreError(f"unknown backup part {unknown[0]!r}; expected {PARTS}")
    t0 = time.monotonic()
    if "redis" in parts:
        restore_redis(stack, service_name(stack, "cache"), backup, timeout, say)
    if "milvus" in parts:
        milvus = stack.service(service_name(stack, "vector_store"))
        restore_milvus(milvus.url(), backup, batch_size, timeout, say)
    return time.monotonic() - t0


def restore_on_start(stack: Any, backup: OpenedBackup, *, say: Say = _quiet,
                     batch_size: int = 512, timeout: float = 60.0) -> Callable[[], float]:
    """Make a stack that is not up yet start on a verified backup: the seed's order for a
    restore, the data first and then the agent (:meth:`Stack.prepare`).

    Redis is given the archived RDB file before its first start and starts on it (no
    restart); every Milvus collection is recreated and refilled as soon as Milvus is
    ready, before anything that uses it (the agents) starts. Bring the stack up without
    its jobs (``jobs=False``): an ingest would write into the restored collection.

    Returns:
        A function giving the seconds the restore took, once the stack is up.
    """
    spent: list[float] = []

    def timed(work: Callable[[], None]) -> None:
        t0 = time.monotonic()
        try:
            work()
        finally:
            spent.append(time.monotonic() - t0)

    def redis_data(data_dir: Path) -> None:
        say("  redis: placing dump.rdb into its data directory before it starts")
        timed(lambda: place_rdb(backup, data_dir))

    stack.prepare(service_name(stack, "cache"), data=redis_data,
                  ready=lambda h: timed(lambda: check_rdb_loaded(h.url(), timeout)))
    stack.prepare(service_name(stack, "vector_store"), ready=lambda h: timed(
        lambda: restore_milvus(h.url(), backup, batch_size, timeout, say)))
    return lambda: sum(spent)


def compare_with(stack: Any, backup: OpenedBackup, *, ttl_slack_s: float = 2.0,
                 vector_tolerance: float = 1e-6, score_tolerance: float = 1e-4) -> Comparison:
    """Measure a (restored) stack against a backup: keys, TTLs, entities, searches."""
    cmp = Comparison()
    redis_url = stack.service(service_name(stack, "cache")).url()
    compare_redis(redis_url, backup, cmp, ttl_slack_s)
    milvus_uri = stack.service(service_name(stack, "vector_store")).url()
    compare_milvus(milvus_uri, backup, cmp, vector_tolerance, score_tolerance)
    return cmp


def live_fingerprint(stack: Any) -> dict[str, Any]:
    """What must not change when a restore is refused: instance identity, data.

    Redis' ``run_id`` changes on every restart, on every backend; the key digests and
    the entity counts prove no data was replaced.
    """
    import redis

    out: dict[str, Any] = {}
    for role in ("cache", "vector_store"):
        handle = stack.service(service_name(stack, role))
        out[f"{role}.instance"] = (handle.key, handle.started_at, id(handle))
        out[f"{role}.running"] = bool(handle.status().running)
    url = stack.service(service_name(stack, "cache")).url()
    try:
        with connect_redis(url) as client:
            out["redis.run_id"] = client.info("server").get("run_id")
    except redis.RedisError as exc:
        raise BackupRestoreError(f"Redis at {url}: {exc}") from exc
    snap = snapshot_redis(url)
    out["redis.keys"] = sorted((k, r.type, r.digest) for k, r in snap.keys.items())
    uri = stack.service(service_name(stack, "vector_store")).url()
    with milvus_session(uri, f"Milvus at {uri}") as client:
        out["milvus.entities"] = {n: count_entities(client, n)
                                  for n in sorted(client.list_collections())}
    return out
