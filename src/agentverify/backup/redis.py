"""The Redis part of a backup: key snapshots, the RDB copy, the restore and its check.

What is here: :func:`snapshot_redis` (every key of every database with its type, a
digest of its value and its PTTL, as :class:`KeyRecord` values in a
:class:`RedisSnapshot`), :func:`backup_redis` (``SAVE``, the RDB file copied from the
service's data directory, ``redis/keys.jsonl``), :func:`restore_redis` (the RDB file put
in place by ``Stack.replace_data``, then waited on until loaded) and :func:`compare_redis`
(keys, values and TTLs of a restored Redis against the archive).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentverify.backup.archive import OpenedBackup, dump_line, read_jsonl
from agentverify.backup.comparison import Comparison
from agentverify.errors import BackupRestoreError

__all__ = ["KeyRecord", "RedisSnapshot", "backup_redis", "compare_redis", "connect_redis",
           "restore_redis", "snapshot_redis"]


@dataclass(frozen=True)
class KeyRecord:
    """One Redis key as the backup saw it: its type, a digest of its value, its PTTL."""

    db: int
    key: bytes
    type: str
    digest: str
    pttl: int  # milliseconds; -1: persistent

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"db": self.db, "key_b64": base64.b64encode(self.key).decode(),
                               "type": self.type, "digest": self.digest, "pttl": self.pttl}
        with contextlib.suppress(UnicodeDecodeError):
            out["key"] = self.key.decode()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyRecord:
        return cls(int(data["db"]), base64.b64decode(data["key_b64"]), str(data["type"]),
                   str(data["digest"]), int(data["pttl"]))


@dataclass
class RedisSnapshot:
    """Every key of every database, read between ``started`` and ``ended`` (unix s)."""

    keys: dict[tuple[int, bytes], KeyRecord]
    started: float
    ended: float


def _digest(kind: str, value: Any) -> str:
    """A digest of a value in a canonical form (set/hash order does not matter)."""
    h = hashlib.sha256(kind.encode() + b"\0")

    def put(b: bytes | str | float | int) -> None:
        data = b if isinstance(b, bytes) else repr(b).encode()
        h.update(len(data).to_bytes(8, "big") + data)

    if kind == "string":
        put(value)
    elif kind == "list":
        for item in value:
            put(item)
    elif kind == "set":
        for item in sorted(value):
            put(item)
    elif kind == "hash":
        for k, v in sorted(value.items()):
            put(k)
            put(v)
    elif kind == "zset":
        for member, score in sorted(value):
            put(member)
            put(float(score))
    elif kind == "stream":
        for entry_id, fields in value:
            put(entry_id)
            for k, v in sorted(fields.items()):
                put(k)
                put(v)
    else:  # module types: the DUMP payload (serialization of this Redis version)
        put(value or b"")
    return h.hexdigest()[:32]


def _read_value(pipe: Any, kind: str, key: bytes) -> None:
    if kind == "string":
        pipe.get(key)
    elif kind == "list":
        pipe.lrange(key, 0, -1)
    elif kind == "set":
        pipe.smembers(key)
    elif kind == "hash":
        pipe.hgetall(key)
    elif kind == "zset":
        pipe.zrange(key, 0, -1, withscores=True)
    elif kind == "stream":
        pipe.xrange(key, "-", "+")
    else:
        pipe.dump(key)


def connect_redis(url: str, db: int = 0) -> Any:
    """A redis client for ``url`` (database ``db``), with timeouts; close it (``with``)."""
    import redis

    return redis.Redis.from_url(url, db=db, socket_timeout=30.0, socket_connect_timeout=5.0)


def _redis_dbs(client: Any) -> list[int]:
    info = client.info("keyspace")
    dbs = sorted(int(k[2:]) for k in info if str(k).startswith("db"))
    return dbs or [0]


def snapshot_redis(url: str, *, batch: int = 500) -> RedisSnapshot:
    """Read every key of every database: type, value digest, PTTL.

    Raises:
        BackupRestoreError: Redis cannot be reached or answers with an error.
    """
    import redis

    started = time.time()
    keys: dict[tuple[int, bytes], KeyRecord] = {}
    try:
        with connect_redis(url) as base:
            dbs = _redis_dbs(base)
        for db in dbs:
            with connect_redis(url, db) as client:
                names: list[bytes] = []
                for key in client.scan_iter(count=1000):
                    names.append(key)
                for start in range(0, len(names), batch):
                    chunk = names[start:start + batch]
                    pipe = client.pipeline(transaction=False)
                    for key in chunk:
                        pipe.type(key)
                        pipe.pttl(key)
                    meta = pipe.execute(raise_on_error=False)
                    kinds = [m.decode() if isinstance(m, bytes) else str(m)
                             for m in meta[0::2]]
                    pttls = meta[1::2]
                    pipe = client.pipeline(transaction=False)
                    for key, kind in zip(chunk, kinds, strict=True):
                        _read_value(pipe, kind, key)
                    values = pipe.execute(raise_on_error=False)
                    for key, kind, pttl, value in zip(chunk, kinds, pttls, values,
                                                      strict=True):
                        if kind == "none" or pttl == -2:
                            continue  # gone between SCAN and the read
                        digest = (f"error:{type(value).__name__}"
                                  if isinstance(value, Exception) else _digest(kind, value))
                        keys[(db, key)] = KeyRecord(db, key, kind, digest,
                                                    int(pttl) if isinstance(pttl, int) else -3)
    except redis.RedisError as exc:
        raise BackupRestoreError(f"Redis at {url}: {exc}") from exc
    return RedisSnapshot(keys, started, time.time())


def _redis_config(client: Any, name: str, default: str) -> str:
    """CONFIG GET, tolerant of deployments that rename or disable CONFIG."""
    import redis

    try:
        value = client.config_get(name).get(name)
    except redis.ResponseError:
        return default
    if isinstance(value, bytes):
        value = value.decode()
    return str(value) if value not in (None, "") else default


def backup_redis(url: str, data_dir: Path, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """SAVE, copy the RDB file, and write keys.jsonl; returns the manifest section."""
    import redis

    before = snapshot_redis(url)
    try:
        with connect_redis(url) as client:
            dbfilename = _redis_config(client, "dbfilename", "dump.rdb")
            version = str(client.info("server").get("redis_version", "?"))
            client.save()
    except redis.RedisError as exc:
        raise BackupRestoreError(f"Redis at {url}: SAVE failed: {exc}") from exc
    after = snapshot_redis(url)
    # Keys that changed while SAVE ran may be in the RDB in either state: they are
    # recorded as volatile and not held against the restore.
    volatile = {k for k in set(before.keys) | set(after.keys)
                if k not in before.keys or k not in after.keys
                or (before.keys[k].type, before.keys[k].digest)
                != (after.keys[k].type, after.keys[k].digest)}
    rdb = data_dir / dbfilename
    if not rdb.is_file():
        raise BackupRestoreError(
            f"Redis SAVE reported success but {rdb} does not exist: is {data_dir} the "
            f"host side of Redis's data directory?")
    (out / "redis").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(rdb, out / "redis" / "dump.rdb")
    with open(out / "redis" / "keys.jsonl", "w", encoding="utf-8") as fh:
        for k in sorted(before.keys):
            record = before.keys[k].to_json()
            if k in volatile:
                record["volatile"] = True
            fh.write(dump_line(record) + "\n")
        for k in sorted(volatile - set(before.keys)):
            fh.write(dump_line({**after.keys[k].to_json(), "volatile": True}) + "\n")
    dbs: dict[str, int] = {}
    for db, _ in before.keys:
        dbs[str(db)] = dbs.get(str(db), 0) + 1
    if volatile:
        say(f"  redis: {len(volatile)} key(s) changed while SAVE ran (recorded as volatile)")
    return {"keys": len(before.keys), "volatile_keys": len(volatile), "dbs": dbs,
            "redis_version": version, "dbfilename": dbfilename,
            "captured_started": before.started, "captured_ended": before.ended}


def _wait_redis_loaded(url: str, timeout: float) -> None:
    import redis

    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while True:
        try:
            with connect_redis(url) as client:
                if int(client.info("persistence").get("loading", 0)) == 0:
                    return
                last = "still loading the RDB file"
        except (redis.BusyLoadingError, redis.ConnectionError, redis.TimeoutError) as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise BackupRestoreError(f"Redis at {url} not serving {timeout:.0f}s after "
                                     f"the restore ({last})")
        time.sleep(0.1)


def _rdb_filename(url: str) -> str:
    """The RDB file name Redis at ``url`` reads at start (refused: AOF on, which ignores
    an RDB file)."""
    import redis

    try:
        with connect_redis(url) as client:
            dbfilename = _redis_config(client, "dbfilename", "dump.rdb")
            if _redis_config(client, "appendonly", "no") == "yes":
                raise BackupRestoreError(
                    f"Redis at {url} runs with appendonly yes: it would ignore a restored "
                    f"RDB file; restore with AOF off, then re-enable it")
    except redis.RedisError as exc:
        raise BackupRestoreError(f"Redis at {url}: {exc}") from exc
    return dbfilename


#: the name :func:`place_rdb` gives the archived RDB file (Redis' default dbfilename)
RDB_NAME = "dump.rdb"


def place_rdb(backup: OpenedBackup, data_dir: Path) -> None:
    """Put the archived RDB file into the data directory of a Redis that has not started
    yet (it loads the file at start); :func:`check_rdb_loaded` once it is up."""
    shutil.copyfile(backup.dir / "redis" / "dump.rdb", data_dir / RDB_NAME)


def check_rdb_loaded(url: str, timeout: float) -> None:
    """Redis at ``url``, started on :func:`place_rdb`'s file, has loaded it.

    Raises:
        BackupRestoreError: it reads another file (dbfilename), runs with AOF on, or is
            still loading after ``timeout`` seconds.
    """
    _wait_redis_loaded(url, timeout)
    dbfilename = _rdb_filename(url)
    if dbfilename != RDB_NAME:
        raise BackupRestoreError(
            f"Redis at {url} reads {dbfilename!r} at start, not {RDB_NAME!r}: the "
            f"restored RDB file was not loaded (restore_verify's fresh: whole restores "
            f"into a running Redis instead)")


def restore_redis(stack: Any, name: str, backup: OpenedBackup, timeout: float,
                  say: Callable[[str], None]) -> None:
    """Replace Redis' data with the archived RDB file (see ``Stack.replace_data``), then
    wait until it has loaded it."""
    handle = stack.service(name)
    dbfilename = _rdb_filename(handle.url())
    say(f"  redis: stopping {handle.name}, placing dump.rdb into its data directory")

    def populate(data_dir: Path) -> None:
        shutil.copyfile(backup.dir / "redis" / "dump.rdb", data_dir / dbfilename)

    try:
        restored = stack.replace_data(name, populate, timeout=timeout)
    except OSError as exc:
        raise BackupRestoreError(
            f"cannot place the RDB file into the data directory of {name} ({exc}); redis "
            f"was restarted on its previous data") from exc
    _wait_redis_loaded(restored.url(), timeout)


def _key_label(record: KeyRecord) -> str:
    return f"redis db{record.db} {record.key!r}"


def compare_redis(url: str, backup: OpenedBackup, cmp: Comparison, slack_s: float) -> None:
    """Count into ``cmp`` the keys of Redis at ``url`` lost, changed, extra or with another
    TTL than the archive's (``slack_s``: allowance on the time between the two readings)."""
    section = backup.manifest["redis"]
    now = snapshot_redis(url)
    cmp.redis_keys = len(now.keys)
    # bounds on the time between the original PTTL read and the restored one
    elapsed_ms = (now.ended - float(section["captured_started"])) * 1000.0
    slack_ms = slack_s * 1000.0
    seen: set[tuple[int, bytes]] = set()
    for data in read_jsonl(backup.dir / "redis" / "keys.jsonl"):
        orig = KeyRecord.from_json(data)
        k = (orig.db, orig.key)
        seen.add(k)
        if data.get("volatile"):
            cmp.keys_volatile += 1
            continue
        got = now.keys.get(k)
        may_expire = orig.pttl >= 0 and orig.pttl <= elapsed_ms + slack_ms
        if got is None:
            if may_expire:
                cmp.keys_expired += 1
            else:
                cmp.keys_lost += 1
                cmp.note(f"lost: {_key_label(orig)} ({orig.type})")
            continue
        if (got.type, got.digest) != (orig.type, orig.digest):
            cmp.keys_changed += 1
            cmp.note(f"changed: {_key_label(orig)} ({orig.type} -> {got.type})")
        if orig.pttl < 0:
            ok = got.pttl == orig.pttl
        else:
            # restored PTTL can only have gone down, and by no more than the time elapsed
            ok = 0 <= got.pttl <= orig.pttl + 1 and got.pttl >= orig.pttl - elapsed_ms - slack_ms
        if not ok:
            cmp.ttl_mismatches += 1
            cmp.note(f"ttl: {_key_label(orig)}: backed up with PTTL {orig.pttl} ms, restored "
                     f"with {got.pttl} ms ({elapsed_ms:.0f} ms later)")
    cmp.keys_extra = len(set(now.keys) - seen)
