"""Backup and restore of the stack's data: Redis and Milvus in one verified archive.

The seed's ``backup()`` (Milvus backup, Redis ``SAVE``, ``tar czf backup_{ts}.tar.gz``)
made checkable. One archive holds everything, and a manifest that says what it holds::

    backup_20250101T120000Z.tar.gz
    ├── manifest.json                     format, source, per-file bytes + sha256, counts,
    │                                     the fixed search set with its expected results
    ├── redis/dump.rdb                    the RDB snapshot written by SAVE
    ├── redis/keys.jsonl                  every key: db, type, value digest, PTTL
    └── milvus/<collection>/schema.json   fields, index params, consistency level
        milvus/<collection>/entities.jsonl  every entity, vectors included

Milvus is exported through pymilvus (``query_iterator``), not by copying its files, so
the same code backs up a real Milvus and Milvus Lite. Redis is copied as the RDB file
from the service's data directory (``backend.volume_path``: a host path on every
backend) and restored by stopping Redis, putting the file in place and starting it.

Restoring is verify-first: :func:`open_backup` reads the whole archive (gzip CRC, tar
structure, every member's size and sha256 against the manifest, nothing extra, a
known format version) *before* anything live is touched, and a bad archive is one
:class:`~agentverify.errors.BackupRestoreError` line naming the archive and member::

    backup_x.tar.gz: milvus/agent_knowledge/entities.jsonl: sha256 mismatch (archive altered?)

Example:
    >>> result = backup_stack(stack, Path("reports/backups"))     # doctest: +SKIP
    >>> with open_backup(result.path) as backup:                    # doctest: +SKIP
    ...     restore_into(fresh_stack, backup)
    ...     print(compare_with(fresh_stack, backup))
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from agentverify.errors import BackupRestoreError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "TAMPER_MODES",
    "BackupResult",
    "Comparison",
    "KeyRecord",
    "OpenedBackup",
    "RedisSnapshot",
    "backup_stack",
    "compare_with",
    "connect_milvus",
    "connect_redis",
    "live_fingerprint",
    "milvus_error",
    "milvus_session",
    "open_backup",
    "read_archive",
    "restore_into",
    "service_name",
    "snapshot_redis",
    "tamper",
    "write_archive",
]

FORMAT = "agentverify-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

_CHUNK = 1 << 20
_MANIFEST_MAX = 16 << 20
_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BYTES_TAG = "__agentverify_bytes__"
# Values pymilvus reports per index that describe its state, not how to build it.
_INDEX_STATE_KEYS = {"total_rows", "indexed_rows", "pending_index_rows", "state",
                     "index_state_fail_reason", "field_name", "index_name",
                     "index_type", "metric_type"}

Say = Callable[[str], None]


def _quiet(line: str) -> None:
    return None


# ================================================================================ archive


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_archive(staging: Path, dest: Path, manifest: dict[str, Any]) -> Path:
    """Pack every file under ``staging`` into ``dest`` (tar.gz) with a manifest.

    ``manifest`` gets ``format``, ``format_version`` and ``files`` (relative path ->
    ``{"bytes", "sha256"}``) filled in; ``manifest.json`` is the archive's first member.
    The archive is written next to ``dest`` and renamed into place, so a crash never
    leaves a half-written archive under the final name.

    Raises:
        BackupRestoreError: ``dest`` cannot be written.
    """
    files: dict[str, dict[str, Any]] = {}
    paths = sorted(p for p in staging.rglob("*") if p.is_file())
    for p in paths:
        rel = p.relative_to(staging).as_posix()
        if rel == MANIFEST:
            raise BackupRestoreError(f"{dest.name}: {MANIFEST}: reserved name in staging")
        files[rel] = {"bytes": p.stat().st_size, "sha256": _sha256_file(p)}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
                "files": files}
    body = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()
    mtime = time.time()
    tmp = dest.with_name(f".{dest.name}.partial")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            tar.addfile(_tarinfo(MANIFEST, len(body), mtime), io.BytesIO(body))
            for p in paths:
                rel = p.relative_to(staging).as_posix()
                with open(p, "rb") as fh:
                    tar.addfile(_tarinfo(rel, files[rel]["bytes"], mtime), fh)
        os.replace(tmp, dest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise BackupRestoreError(f"{dest}: cannot write the archive ({exc.strerror or exc})") \
            from exc
    return dest


def _safe_member_name(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def read_archive(path: Path, extract_to: Path | None = None) -> dict[str, Any]:
    """Verify an archive completely; optionally extract it; return its manifest.

    Checks, in one streaming pass: gzip integrity (CRC, no trailing garbage), tar
    structure (a truncated archive fails while reading), only regular files with safe
    relative names, no duplicates; then against the manifest: a known format and
    version, every listed file present with the listed size and sha256, nothing extra.

    Args:
        path: the archive.
        extract_to: an (empty) directory to write the members into as they are read;
            the caller must discard it when this raises.

    Raises:
        BackupRestoreError: one line, ``ARCHIVE: MEMBER: problem``.
    """
    name = path.name
    seen: dict[str, tuple[int, str]] = {}
    manifest_bytes: bytes | None = None
    trailer_error: BaseException | None = None
    current = "(archive header)"
    try:
        with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz, \
                tarfile.open(fileobj=gz, mode="r|") as tar:
            for member in tar:
                current = member.name
                if not member.isfile():
                    raise BackupRestoreError(
                        f"{name}: {member.name}: unexpected member type (only regular files "
                        f"belong in a backup archive)")
                if not _safe_member_name(member.name):
                    raise BackupRestoreError(f"{name}: {member.name}: unsafe member name")
                if member.name in seen:
                    raise BackupRestoreError(f"{name}: {member.name}: duplicate member")
                fh = tar.extractfile(member)
                assert fh is not None  # a regular file always has a file object
                h = hashlib.sha256()
                size = 0
                keep = member.name == MANIFEST
                buf = bytearray()
                out = None
                if extract_to is not None and not keep:
                    target = extract_to / member.name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    out = open(target, "wb")
                try:
                    while chunk := fh.read(_CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        if keep:
                            if size > _MANIFEST_MAX:
                                raise BackupRestoreError(
                                    f"{name}: {MANIFEST}: larger than {_MANIFEST_MAX} bytes")
                            buf += chunk
                        if out is not None:
                            out.write(chunk)
                finally:
                    if out is not None:
                        out.close()
                if size != member.size:
                    raise BackupRestoreError(
                        f"{name}: {member.name}: truncated ({size} of {member.size} bytes)")
                seen[member.name] = (size, h.hexdigest())
                if keep:
                    manifest_bytes = bytes(buf)
                current = f"(after {member.name})"
            current = "(end of archive)"
            # The tar reader stops at the end-of-archive blocks; read the gzip stream to
            # its end so its CRC and length are checked and trailing garbage is seen.
            try:
                while gz.read(_CHUNK):
                    pass
            except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
                trailer_error = exc
    except BackupRestoreError:
        raise
    except FileNotFoundError:
        raise BackupRestoreError(f"{path}: no such archive") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BackupRestoreError(
            f"{name}: {current}: unreadable, truncated or corrupted ({reason})") from exc
    try:
        manifest = _check_manifest(name, manifest_bytes, seen)
    except BackupRestoreError as exc:
        raise exc from trailer_error
    if trailer_error is not None:
        # every member matched its sha256, yet the gzip stream is damaged after them
        reason = str(trailer_error) or type(trailer_error).__name__
        raise BackupRestoreError(f"{name}: (end of archive): unreadable, truncated or "
                                 f"corrupted ({reason})") from trailer_error
    return manifest


def _check_manifest(name: str, manifest_bytes: bytes | None,
                    seen: dict[str, tuple[int, str]]) -> dict[str, Any]:
    """The manifest parsed and every member checked against it (see read_archive)."""
    if manifest_bytes is None:
        raise BackupRestoreError(f"{name}: {MANIFEST}: missing (not an agentverify backup?)")
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as exc:
        raise BackupRestoreError(f"{name}: {MANIFEST}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupRestoreError(f"{name}: {MANIFEST}: not an {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BackupRestoreError(
            f"{name}: {MANIFEST}: unknown format version {version!r} (this agentverify "
            f"reads version {FORMAT_VERSION}; restore with the agentverify that wrote it)")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BackupRestoreError(f"{name}: {MANIFEST}: no 'files' table")
    for rel, want in files.items():
        if rel not in seen:
            raise BackupRestoreError(f"{name}: {rel}: missing from the archive")
        size, digest = seen[rel]
        if not isinstance(want, dict) or size != want.get("bytes"):
            want_bytes = want.get("bytes") if isinstance(want, dict) else None
            raise BackupRestoreError(
                f"{name}: {rel}: size {size} bytes, manifest says {want_bytes} "
                f"(archive altered?)")
        if digest != want.get("sha256"):
            raise BackupRestoreError(f"{name}: {rel}: sha256 mismatch (archive altered?)")
    extra = sorted(set(seen) - set(files) - {MANIFEST})
    if extra:
        raise BackupRestoreError(
            f"{name}: {extra[0]}: unexpected member, not in the manifest (archive altered?)")
    return manifest


@dataclass
class OpenedBackup:
    """A verified archive, extracted into a temporary directory."""

    path: Path
    manifest: dict[str, Any]
    dir: Path

    @property
    def collections(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest.get("milvus", {}).get("collections", {}))


@contextlib.contextmanager
def open_backup(path: Path | str, workdir: Path | None = None) -> Iterator[OpenedBackup]:
    """Verify and extract an archive; the extracted files are removed on exit.

    Nothing outside ``workdir`` (a fresh temporary directory) is written, so a
    :class:`~agentverify.errors.BackupRestoreError` from here means nothing live was
    touched.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix="agentverify-restore-", dir=workdir))
    try:
        manifest = read_archive(path, extract_to=tmp)
        yield OpenedBackup(path, manifest, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ================================================================================ JSON


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {_BYTES_TAG: base64.b64encode(bytes(value)).decode()}
    if hasattr(value, "tolist"):  # numpy scalars / arrays
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__} in a backup")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and _BYTES_TAG in obj:
        return base64.b64decode(obj[_BYTES_TAG])
    return obj


def _dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"),
                      ensure_ascii=False)


def _loads(line: str) -> Any:
    return json.loads(line, object_hook=_json_hook)


def _jsonl(path: Path) -> Iterator[Any]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield _loads(line)


# ================================================================================ Redis


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


def _backup_redis(url: str, data_dir: Path, out: Path, say: Say) -> dict[str, Any]:
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
            fh.write(_dumps(record) + "\n")
        for k in sorted(volatile - set(before.keys)):
            fh.write(_dumps({**after.keys[k].to_json(), "volatile": True}) + "\n")
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


def _restore_redis(stack: Any, backup: OpenedBackup, timeout: float, say: Say) -> None:
    """Stop Redis, put the RDB file into its data directory, start it, wait loaded."""
    import redis

    name = service_name(stack, "cache")
    handle = stack.service(name)
    url = handle.url()
    try:
        with connect_redis(url) as client:
            dbfilename = _redis_config(client, "dbfilename", "dump.rdb")
            if _redis_config(client, "appendonly", "no") == "yes":
                raise BackupRestoreError(
                    f"Redis at {url} runs with appendonly yes: it would ignore a restored "
                    f"RDB file; restore with AOF off, then re-enable it")
    except redis.RedisError as exc:
        raise BackupRestoreError(f"Redis at {url}: {exc}") from exc
    data_dir = Path(stack.backend.volume_path(handle))
    say(f"  redis: stopping {handle.name}, placing dump.rdb into its data directory")
    stack.backend.stop(handle)
    target = data_dir / dbfilename
    tmp = data_dir / f".{dbfilename}.restore"
    try:
        shutil.copyfile(backup.dir / "redis" / "dump.rdb", tmp)
        os.chmod(tmp, 0o644)  # a container's redis user must be able to read it
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        stack.restart(name)  # back on its old data rather than left stopped
        raise BackupRestoreError(
            f"cannot place the RDB file into {data_dir} ({exc.strerror or exc}); redis "
            f"was restarted on its previous data") from exc
    stack.restart(name)
    _wait_redis_loaded(stack.service(name).url(), timeout)


# ================================================================================ Milvus


def connect_milvus(uri: str) -> Any:
    from pymilvus import MilvusClient

    # pymilvus logs a traceback of its own for every failed call; we raise one line.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    return MilvusClient(uri=uri, timeout=60.0)


def milvus_error(where: str, exc: BaseException) -> BackupRestoreError:
    msg = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return BackupRestoreError(f"{where}: {msg[0] if msg else type(exc).__name__}")


@contextlib.contextmanager
def milvus_session(uri: str, where: str) -> Iterator[Any]:
    """A Milvus client that is always closed; its errors become one-line
    :class:`BackupRestoreError` naming ``where``."""
    client = connect_milvus(uri)
    try:
        yield client
    except BackupRestoreError:
        raise
    except Exception as exc:  # MilvusException, grpc errors
        raise milvus_error(where, exc) from exc
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _plain(value: Any) -> Any:
    """describe_* output as JSON: enums by name, protobuf values unwrapped."""
    if hasattr(value, "name") and type(value).__module__.startswith("pymilvus"):
        return value.name
    if hasattr(value, "WhichOneof"):  # protobuf ValueField (default_value)
        which = value.WhichOneof("data")
        return getattr(value, which) if which else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _describe(client: Any, name: str) -> dict[str, Any]:
    desc = _plain(client.describe_collection(name))
    if desc.get("functions"):
        raise BackupRestoreError(
            f"Milvus collection {name!r} has functions (e.g. BM25): not supported by "
            f"this backup format")
    indexes = []
    for index_name in client.list_indexes(name):
        info = _plain(client.describe_index(name, index_name))
        info.setdefault("index_name", index_name)
        indexes.append(info)
    return {"collection": name,
            "fields": desc["fields"],
            "auto_id": bool(desc.get("auto_id")),
            "enable_dynamic_field": bool(desc.get("enable_dynamic_field")),
            "description": desc.get("description", ""),
            "consistency_level": desc.get("consistency_level_name") or "Strong",
            "properties": desc.get("properties") or {},
            "num_shards": desc.get("num_shards"),
            "indexes": indexes}


def _primary(schema: dict[str, Any]) -> str:
    for f in schema["fields"]:
        if f.get("is_primary"):
            return str(f["name"])
    raise BackupRestoreError(f"Milvus collection {schema['collection']!r} has no primary key")


def _output_fields(schema: dict[str, Any]) -> list[str]:
    names = [str(f["name"]) for f in schema["fields"]]
    return names + (["*"] if schema["enable_dynamic_field"] else [])


def _float_vector_fields(schema: dict[str, Any]) -> list[str]:
    return [str(f["name"]) for f in schema["fields"] if f["type"] == "FLOAT_VECTOR"]


def _iterate(client: Any, name: str, schema: dict[str, Any],
             batch_size: int = 1000) -> Iterator[dict[str, Any]]:
    it = client.query_iterator(name, batch_size=batch_size,
                               output_fields=_output_fields(schema))
    try:
        while True:
            rows = it.next()
            if not rows:
                return
            yield from rows
    finally:
        it.close()


def _normalize(entity: dict[str, Any]) -> dict[str, Any]:
    """An entity as it reads back from JSON (so live and archived ones compare)."""
    return _loads(_dumps(dict(entity)))


def _search_set(client: Any, name: str, schema: dict[str, Any], ids: list[Any],
                queries: int, limit: int) -> list[dict[str, Any]]:
    """Queries with the stored vectors of fixed entities, and their results now."""
    fields = _float_vector_fields(schema)
    metric = {i.get("field_name"): i.get("metric_type") for i in schema["indexes"]}
    fields = [f for f in fields if metric.get(f)]
    if not fields or not ids or queries <= 0:
        return []
    field_name = fields[0]
    pk = _primary(schema)
    ordered = sorted(ids)
    step = max(1, len(ordered) // queries)
    chosen = ordered[::step][:queries]
    rows = client.get(name, ids=chosen, output_fields=[pk, field_name])
    vectors = {r[pk]: [float(x) for x in r[field_name]] for r in rows}
    out = []
    for qid in chosen:
        vec = vectors.get(qid)
        if vec is None:
            continue
        hits = _search(client, name, field_name, metric[field_name], vec, limit, pk)
        out.append({"collection": name, "field": field_name, "metric_type": metric[field_name],
                    "query_entity": qid, "vector": vec, "limit": limit, "expected": hits})
    return out


def _search(client: Any, name: str, field_name: str, metric: str, vector: list[float],
            limit: int, pk: str) -> list[dict[str, Any]]:
    res = client.search(name, data=[vector], anns_field=field_name, limit=limit,
                        search_params={"metric_type": metric}, output_fields=[pk])
    return [{"id": h.get(pk, h.get("id")), "score": float(h["distance"])} for h in res[0]]


def _backup_milvus(uri: str, out: Path, say: Say, queries: int,
                   limit: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Export every collection; returns (manifest section, search set)."""
    collections: dict[str, Any] = {}
    search: list[dict[str, Any]] = []
    with milvus_session(uri, f"Milvus at {uri}") as client:
        for name in sorted(client.list_collections()):
            if not _COLLECTION_NAME.match(name):
                raise BackupRestoreError(f"Milvus collection {name!r}: unexpected name")
            schema = _describe(client, name)
            partitions = [p for p in client.list_partitions(name) if p != "_default"]
            has_partition_key = any(f.get("is_partition_key") for f in schema["fields"])
            if partitions and not has_partition_key:
                raise BackupRestoreError(
                    f"Milvus collection {name!r} has partitions {partitions}: not supported "
                    f"by this backup format")
            pk = _primary(schema)
            cdir = out / "milvus" / name
            cdir.mkdir(parents=True, exist_ok=True)
            (cdir / "schema.json").write_text(json.dumps(schema, indent=2) + "\n")
            ids: list[Any] = []
            with open(cdir / "entities.jsonl", "w", encoding="utf-8") as fh:
                for entity in _iterate(client, name, schema):
                    fh.write(_dumps(entity) + "\n")
                    ids.append(entity[pk])
            collections[name] = {"entities": len(ids), "primary_field": pk}
            search += _search_set(client, name, schema, ids, queries, limit)
            say(f"  milvus: {name}: {len(ids)} entities, {len(schema['indexes'])} index(es)")
    return {"collections": collections}, search


def _build_schema(schema: dict[str, Any]) -> tuple[Any, Any]:
    from pymilvus import DataType, MilvusClient

    s = MilvusClient.create_schema(auto_id=schema["auto_id"],
                                   enable_dynamic_field=schema["enable_dynamic_field"],
                                   description=schema.get("description", ""))
    for f in schema["fields"]:
        kwargs: dict[str, Any] = dict(f.get("params") or {})
        for flag in ("is_primary", "is_partition_key", "is_clustering_key", "nullable",
                     "auto_id"):
            if f.get(flag):
                kwargs[flag] = True
        if f.get("default_value") is not None:
            kwargs["default_value"] = f["default_value"]
        if f.get("element_type"):
            kwargs["element_type"] = DataType[f["element_type"]]
        if f.get("description"):
            kwargs["description"] = f["description"]
        for k in ("max_length", "dim", "max_capacity"):
            if k in kwargs:
                kwargs[k] = int(kwargs[k])
        s.add_field(f["name"], DataType[f["type"]], **kwargs)
    index = MilvusClient.prepare_index_params()
    for i in schema["indexes"]:
        params = {k: v for k, v in i.items() if k not in _INDEX_STATE_KEYS}
        nested = params.pop("params", None)
        if isinstance(nested, dict):
            params.update(nested)
        if i.get("metric_type"):
            params["metric_type"] = i["metric_type"]
        index.add_index(field_name=i["field_name"], index_type=i.get("index_type", ""),
                        index_name=i.get("index_name", ""), **params)
    return s, index


def _sparse_fields(schema: dict[str, Any]) -> list[str]:
    return [str(f["name"]) for f in schema["fields"] if f["type"] == "SPARSE_FLOAT_VECTOR"]


def _for_insert(entity: dict[str, Any], sparse: list[str]) -> dict[str, Any]:
    for name in sparse:  # JSON turned the sparse vector's int keys into strings
        if isinstance(entity.get(name), dict):
            entity[name] = {int(k): v for k, v in entity[name].items()}
    return entity


def _count(client: Any, name: str) -> int:
    rows = client.query(name, filter="", output_fields=["count(*)"])
    return int(rows[0]["count(*)"]) if rows else 0


def _restore_milvus(uri: str, backup: OpenedBackup, batch_size: int, timeout: float,
                    say: Say) -> None:
    with milvus_session(uri, f"Milvus at {uri}: restore") as client:
        for name, info in sorted(backup.collections.items()):
            cdir = backup.dir / "milvus" / name
            schema = json.loads((cdir / "schema.json").read_text())
            s, index = _build_schema(schema)
            if client.has_collection(name):
                client.drop_collection(name)
            client.create_collection(name, schema=s, index_params=index,
                                     consistency_level=schema.get("consistency_level",
                                                                  "Strong"))
            if schema.get("properties"):
                client.alter_collection_properties(name, properties=schema["properties"])
            sparse = _sparse_fields(schema)
            batch: list[dict[str, Any]] = []
            for entity in _jsonl(cdir / "entities.jsonl"):
                batch.append(_for_insert(entity, sparse))
                if len(batch) >= batch_size:
                    client.insert(name, batch)
                    batch = []
            if batch:
                client.insert(name, batch)
            client.flush(name)
            client.load_collection(name)
            want = int(info["entities"])
            deadline = time.monotonic() + timeout
            while (have := _count(client, name)) != want:
                if time.monotonic() > deadline:
                    raise BackupRestoreError(
                        f"Milvus at {uri}: {name}: {have} of {want} entities visible "
                        f"{timeout:.0f}s after the restore")
                time.sleep(0.2)
            say(f"  milvus: {name}: recreated, {want} entities inserted")


# ================================================================================ stack


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
        redis_part = _backup_redis(redis_handle.url(),
                                   Path(stack.backend.volume_path(redis_handle)), staging, say)
        say(f"  redis: SAVE, dump.rdb and {redis_part['keys']} key record(s)")
        milvus_part, search = _backup_milvus(milvus_handle.url(), staging, say,
                                             search_queries, search_limit)
        manifest = {
            "created": now.isoformat().replace("+00:00", "Z"),
            "source": {"env": getattr(stack.spec, "env_name", ""),
                       "backend": getattr(stack.backend, "name", ""),
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


def restore_into(stack: Any, backup: OpenedBackup, *, say: Say = _quiet,
                 batch_size: int = 512, timeout: float = 60.0) -> float:
    """Restore a verified backup into a running stack; returns the seconds taken.

    Redis is stopped, given the RDB file and started again (same ports and data
    directory); each Milvus collection is dropped, recreated with the archived schema
    and indexes, and refilled in batches.
    """
    t0 = time.monotonic()
    _restore_redis(stack, backup, timeout, say)
    milvus = stack.service(service_name(stack, "vector_store"))
    _restore_milvus(milvus.url(), backup, batch_size, timeout, say)
    return time.monotonic() - t0


# ================================================================================ verify


@dataclass
class Comparison:
    """A restored stack measured against the backup it came from."""

    keys_lost: int = 0
    keys_changed: int = 0
    keys_extra: int = 0
    keys_expired: int = 0
    keys_volatile: int = 0
    ttl_mismatches: int = 0
    entities_lost: int = 0
    entities_changed: int = 0
    entities_extra: int = 0
    search_queries: int = 0
    search_mismatches: int = 0
    redis_keys: int = 0
    entities: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def zero_loss(self) -> bool:
        return not (self.keys_lost or self.keys_changed or self.ttl_mismatches
                    or self.entities_lost or self.entities_changed or self.search_mismatches)

    def facts(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "problems"}

    def note(self, problem: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(problem)

    def __str__(self) -> str:
        head = ", ".join(f"{k}={v}" for k, v in self.facts().items())
        return "\n".join([head, *self.problems])


def _close(a: Any, b: Any, tol: float) -> bool:
    """Equal, with floats (also inside lists and dicts) within ``tol``."""
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
                and not isinstance(a, bool) and not isinstance(b, bool):
            return math.isclose(a, b, rel_tol=tol, abs_tol=tol) or (a != a and b != b)
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    return bool(a == b)


def _key_label(record: KeyRecord) -> str:
    return f"redis db{record.db} {record.key!r}"


def _compare_redis(url: str, backup: OpenedBackup, cmp: Comparison, slack_s: float) -> None:
    section = backup.manifest["redis"]
    now = snapshot_redis(url)
    cmp.redis_keys = len(now.keys)
    # bounds on the time between the original PTTL read and the restored one
    elapsed_ms = (now.ended - float(section["captured_started"])) * 1000.0
    slack_ms = slack_s * 1000.0
    seen: set[tuple[int, bytes]] = set()
    for data in _jsonl(backup.dir / "redis" / "keys.jsonl"):
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


def _compare_milvus(uri: str, backup: OpenedBackup, cmp: Comparison, tol: float,
                    score_tol: float) -> None:
    with milvus_session(uri, f"Milvus at {uri}: verify") as client:
        for name, info in sorted(backup.collections.items()):
            cdir = backup.dir / "milvus" / name
            schema = json.loads((cdir / "schema.json").read_text())
            pk = str(info["primary_field"])
            live: dict[Any, dict[str, Any]] = {}
            if client.has_collection(name):
                for entity in _iterate(client, name, schema):
                    live[entity[pk]] = _normalize(entity)
            cmp.entities += len(live)
            seen = set()
            for orig in _jsonl(cdir / "entities.jsonl"):
                key = orig[pk]
                seen.add(key)
                got = live.get(key)
                if got is None:
                    cmp.entities_lost += 1
                    cmp.note(f"lost: milvus {name} {pk}={key!r}")
                elif not _close(orig, got, tol):
                    cmp.entities_changed += 1
                    diff = sorted(f for f in set(orig) | set(got)
                                  if not _close(orig.get(f), got.get(f), tol))
                    cmp.note(f"changed: milvus {name} {pk}={key!r} fields {diff}")
            cmp.entities_extra += len(set(live) - seen)
        for q in backup.manifest.get("search", []):
            cmp.search_queries += 1
            pk = str(backup.collections[q["collection"]]["primary_field"])
            try:
                got = _search(client, q["collection"], q["field"], q["metric_type"],
                              q["vector"], int(q["limit"]), pk)
            except Exception as exc:  # a missing collection / index is a mismatch
                cmp.search_mismatches += 1
                cmp.note(f"search: {q['collection']} query {q['query_entity']!r}: {exc}")
                continue
            problem = _search_differs(q["expected"], got, score_tol)
            if problem:
                cmp.search_mismatches += 1
                cmp.note(f"search: {q['collection']} query {q['query_entity']!r}: {problem}")


def _search_differs(expected: list[dict[str, Any]], got: list[dict[str, Any]],
                    tol: float) -> str | None:
    """None when the hits match: same ids in order, scores within ``tol``.

    Hits whose scores tie (within ``tol``) may come back in either order, so ids are
    compared as a set within each run of equal scores; at the cut-off a tie may even
    bring in a different id of the same score.
    """
    if len(expected) != len(got):
        return f"{len(got)} hits, expected {len(expected)}"
    for i, (e, g) in enumerate(zip(expected, got, strict=True)):
        if abs(float(e["score"]) - float(g["score"])) > tol:
            return f"hit {i}: score {g['score']:.6f}, expected {e['score']:.6f}"
    i = 0
    while i < len(expected):
        j = i
        while j + 1 < len(expected) and \
                abs(float(expected[j + 1]["score"]) - float(expected[i]["score"])) <= tol:
            j += 1
        want = {e["id"] for e in expected[i:j + 1]}
        have = {g["id"] for g in got[i:j + 1]}
        if want != have and j + 1 < len(expected):
            ids = [g["id"] for g in got]
            return f"ids {ids}, expected {[e['id'] for e in expected]}"
        i = j + 1
    return None


def compare_with(stack: Any, backup: OpenedBackup, *, ttl_slack_s: float = 2.0,
                 vector_tolerance: float = 1e-6, score_tolerance: float = 1e-4) -> Comparison:
    """Measure a (restored) stack against a backup: keys, TTLs, entities, searches."""
    cmp = Comparison()
    redis_url = stack.service(service_name(stack, "cache")).url()
    _compare_redis(redis_url, backup, cmp, ttl_slack_s)
    milvus_uri = stack.service(service_name(stack, "vector_store")).url()
    _compare_milvus(milvus_uri, backup, cmp, vector_tolerance, score_tolerance)
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
        out["milvus.entities"] = {n: _count(client, n) for n in sorted(client.list_collections())}
    return out


def tamper(src: Path, dst: Path, mode: str) -> Path:
    """Write a damaged copy of an archive (for rehearsing a refused restore).

    Modes: ``truncate`` (cut in half), ``flip_byte`` (one byte of the compressed
    stream inverted), ``extra_member`` (a file the manifest does not list),
    ``missing_member`` (one listed file left out), ``altered_member`` (one listed file
    changed, recompressed cleanly), ``bad_version`` (an unknown format version).
    """
    data = src.read_bytes()
    if mode == "truncate":
        dst.write_bytes(data[: len(data) // 2])
    elif mode == "flip_byte":
        pos = len(data) // 2
        dst.write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:])
    elif mode in {"extra_member", "missing_member", "altered_member", "bad_version"}:
        members: list[tuple[str, bytes]] = []
        with tarfile.open(src, "r:gz") as tar:
            for m in tar:
                fh = tar.extractfile(m)
                members.append((m.name, fh.read() if fh else b""))
        if mode == "extra_member":
            members.append(("redis/notes.txt", b"not part of the backup\n"))
        elif mode == "missing_member":
            members = [m for m in members if m[0] != _largest(members)]
        elif mode == "altered_member":
            victim = _largest(members)
            members = [(n, b[:-2] + b"X\n" if n == victim else b) for n, b in members]
        else:
            manifest = json.loads(dict(members)[MANIFEST])
            manifest["format_version"] = FORMAT_VERSION + 98
            members = [(n, json.dumps(manifest).encode() if n == MANIFEST else b)
                       for n, b in members]
        with tarfile.open(dst, "w:gz") as tar:
            for n, b in members:
                tar.addfile(_tarinfo(n, len(b), time.time()), io.BytesIO(b))
    else:
        raise ValueError(f"unknown tamper mode {mode!r}")
    return dst


TAMPER_MODES = ("truncate", "flip_byte", "extra_member", "missing_member", "altered_member",
                "bad_version")


def _largest(members: Iterable[tuple[str, bytes]]) -> str:
    """The largest member other than the manifest (the entities, in practice)."""
    candidates = [(len(b), n) for n, b in members if n != MANIFEST]
    return max(candidates)[1]
