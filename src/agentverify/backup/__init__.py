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
backend) and restored through :meth:`~agentverify.stack.stack.Stack.replace_data`
(Redis stopped, the file put in place, Redis started on the same ports, ready), or, into
a stack about to start, placed before Redis first starts (:func:`restore_on_start`: the
data first, then the agents, as a restore is done).

Restoring is verify-first: :func:`open_backup` reads the whole archive (gzip CRC, tar
structure, every member's size and sha256 against the manifest, nothing extra, a
known format version) *before* anything live is touched, and a bad archive is one
:class:`~agentverify.errors.BackupRestoreError` line naming the archive and member::

    backup_x.tar.gz: milvus/agent_knowledge/entities.jsonl: sha256 mismatch (archive altered?)

Modules, by concept:

==================  ==================================================================
``archive``         the format: write / read / verify the tar.gz and its manifest, safe
                    member names, extraction into a temporary directory, JSON lines
``redis``           key snapshots, SAVE + the RDB copy, the restore, the key/TTL check
``milvus``          collection export, the fixed search set, the restore, the check
``comparison``      the :class:`Comparison` result and tolerant value equality
``tamper``          damaged copies of an archive, for tests and rehearsals
``operations``      the whole stack: backup, restore, compare, live fingerprint
==================  ==================================================================

Example:
    >>> result = backup_stack(stack, Path("reports/backups"))     # doctest: +SKIP
    >>> with open_backup(result.path) as backup:                    # doctest: +SKIP
    ...     restore_into(fresh_stack, backup)
    ...     print(compare_with(fresh_stack, backup))
"""

from agentverify.backup.archive import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    OpenedBackup,
    open_backup,
    read_archive,
    write_archive,
)
from agentverify.backup.comparison import Comparison
from agentverify.backup.milvus import connect_milvus, milvus_error, milvus_session
from agentverify.backup.operations import (
    BackupResult,
    backup_stack,
    compare_with,
    live_fingerprint,
    restore_into,
    restore_on_start,
    service_name,
)
from agentverify.backup.redis import KeyRecord, RedisSnapshot, connect_redis, snapshot_redis
from agentverify.backup.tamper import TAMPER_MODES, tamper

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
    "restore_on_start",
    "service_name",
    "snapshot_redis",
    "tamper",
    "write_archive",
]
