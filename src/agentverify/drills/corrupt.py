"""Data corruption for the data-corruption drill, and its guaranteed repair.

:func:`corrupt_stack` damages the live data the way a bad migration, a faulty
re-embedding job or a cache written by a buggy release would:

* ``noise``: that share of the knowledge collection's entities get random unit
  vectors in place of their embeddings (search returns unrelated passages);
* ``delete``: that share of the entities is deleted (search misses them);
* ``poison_cache``: that share of the cached answers is rewritten to cite a document
  that does not exist (the cache keeps answering, wrongly).

Before anything is touched, the known-answer questions are asked once (so their
answers are cached: a poisoned cache is then visible) and the stack is backed up
unless the scenario already holds a verified backup: that archive is "the last
verified backup" the runbook's ``restore_backup`` restores. :class:`Corruption` in the
scenario's state records which parts still differ from it; whatever the runbook did
not restore is restored from it after the scenario, also after a failure.

Example:
    >>> found = corrupt_stack(ctx, noise=0.5, delete=0.25, poison_cache=1.0)  # doctest: +SKIP
    >>> found.vectors_noised, found.entities_deleted, found.answers_poisoned
    (27, 13, 3)
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentverify import agent_ops
from agentverify.backup import backup_stack, milvus_session, open_backup, restore_into, service_name
from agentverify.backup.milvus import entities, schema_of
from agentverify.errors import ScenarioError
from agentverify.scenarios.backup_restore import ARCHIVE_KEY
from agentverify.scenarios.known_answers import check_known_answer

if TYPE_CHECKING:
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["BACKUP_KEY", "CORRUPTION_KEY", "WRONG_SOURCE", "Corruption", "corrupt_stack",
           "last_verified_backup"]

#: where the backup step leaves its archive in the scenario's state
BACKUP_KEY = ARCHIVE_KEY
CORRUPTION_KEY = "corruption"
#: the document a poisoned answer cites (not in any knowledge base)
WRONG_SOURCE = "corrupted-entry.md"


@dataclass
class Corruption:
    """What :func:`corrupt_stack` did, and what is still not restored."""

    backup: Path
    collection: str
    vectors_noised: int = 0
    entities_deleted: int = 0
    answers_poisoned: int = 0
    started: float = 0.0  # unix time the data started to change
    #: parts of the backup not restored since the corruption
    pending: set[str] = field(default_factory=lambda: {"redis", "milvus"})

    def restored(self, parts: list[str] | tuple[str, ...]) -> None:
        self.pending -= set(parts)


def last_verified_backup(ctx: ScenarioContext) -> Path | None:
    """The scenario's last backup, read back and verified when it was written."""
    path = ctx.state.get(BACKUP_KEY)
    return Path(path) if path else None


def _milvus_uri(ctx: ScenarioContext) -> str:
    return str(ctx.stack.service(service_name(ctx.stack, "vector_store")).url())


def _unit(dim: int, rng: random.Random) -> list[float]:
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def _corrupt_milvus(uri: str, collection: str, noise: float, delete: float,
                    rng: random.Random) -> tuple[int, int]:
    with milvus_session(uri, f"corrupting Milvus at {uri}: {collection}") as client:
        if not client.has_collection(collection):
            raise ScenarioError(f"corrupt: Milvus at {uri} has no collection {collection!r}")
        schema = schema_of(client, collection)
        pk, vectors = schema["primary"], schema["vectors"]
        rows = list(entities(client, collection, schema))
        rng.shuffle(rows)
        n_delete = round(delete * len(rows))
        n_noise = min(round(noise * len(rows)), len(rows) - n_delete)
        doomed = [r[pk] for r in rows[:n_delete]]
        noised = rows[n_delete:n_delete + n_noise]
        for row in noised:
            for name in vectors:
                row[name] = _unit(len(row[name]), rng)
        if noised and vectors:
            client.upsert(collection, noised)
        if doomed:
            client.delete(collection, ids=doomed)
        client.flush(collection)
    return (len(noised) if vectors else 0), len(doomed)


def poison_cache(ctx: ScenarioContext, *, fraction: float, rng: random.Random) -> int:
    """Overwrite ``fraction`` of the cached answers (``contract.cache_keys``) with ones
    citing :data:`WRONG_SOURCE`, their TTL kept: a corrupted cache keeps answering, from
    the wrong document. An entry is rewritten where the contract finds its sources
    (``reply.sources`` / ``source_title`` inside the cached JSON); others are left alone.
    """
    sources_key = ctx.contract.section.reply.sources or "sources"
    title_key = ctx.contract.section.reply.source_title or "title"
    poisoned = 0
    for entry in sorted(agent_ops.cache_entries(ctx.stack), key=lambda e: e.key):
        if rng.random() >= fraction or not isinstance(entry.value, dict) \
                or sources_key not in entry.value:
            continue
        value = dict(entry.value)
        value[sources_key] = [{title_key: WRONG_SOURCE, "source": WRONG_SOURCE, "score": 0.0}]
        agent_ops.write_cache_entry(ctx.stack, entry.key, value)
        poisoned += 1
    return poisoned


def corrupt_stack(ctx: ScenarioContext, *, noise: float, delete: float, poison_cache_ratio: float,
                  collection: str | None = None, seed: int = 7) -> Corruption:
    """Back up (unless done), then corrupt the live data (see the module docstring).

    The repair is deferred at once: after the scenario, every part the runbook did not
    restore is restored from the backup.
    """
    if CORRUPTION_KEY in ctx.state and ctx.state[CORRUPTION_KEY].pending:
        raise ScenarioError("corrupt: the data is already corrupted (restore it first)")
    collection = collection or ctx.config.vector_store.collection
    # the known answers cached, so that a poisoned cache answers them wrongly
    for known in ctx.config.known_answers:
        problem = check_known_answer(ctx, known)
        if problem:
            raise ScenarioError(f"corrupt: the data is wrong before it is corrupted: {problem}")
    backup = last_verified_backup(ctx)
    if backup is None:
        result = backup_stack(ctx.stack, Path(ctx.report_dir) / "backups", say=ctx.say)
        backup = result.path
        ctx.state[BACKUP_KEY] = backup
        ctx.say(f"  backed up first: {backup.name} ({result.redis_keys} keys, "
                f"{result.entities} entities, verified)")
    found = Corruption(backup=backup, collection=collection, started=time.time())
    ctx.state[CORRUPTION_KEY] = found
    ctx.defer("restore what the corruption damaged", lambda: repair(ctx))
    rng = random.Random(seed)
    found.vectors_noised, found.entities_deleted = _corrupt_milvus(
        _milvus_uri(ctx), collection, noise, delete, rng)
    if poison_cache_ratio > 0:
        found.answers_poisoned = poison_cache(ctx, fraction=poison_cache_ratio, rng=rng)
    else:
        found.pending.discard("redis")  # Redis untouched: nothing of it to restore
    ctx.say(f"  corrupted {collection}: {found.vectors_noised} vectors overwritten with noise, "
            f"{found.entities_deleted} entities deleted; {found.answers_poisoned} cached "
            f"answers poisoned (backup {backup.name})")
    return found


def repair(ctx: ScenarioContext) -> list[str]:
    """Restore, from the backup, every part still corrupted; the parts restored."""
    found: Corruption | None = ctx.state.get(CORRUPTION_KEY)
    if found is None or not found.pending:
        return []
    parts = [p for p in ("redis", "milvus") if p in found.pending]
    ctx.say(f"  restoring {', '.join(parts)} from {found.backup.name} (still corrupted); "
            "the agents stopped meanwhile and started again on the restored data")
    # as the runbook does it: an agent kept running across a rebuilt collection or a
    # replaced cache may keep serving what it held of the corrupted data
    stopped = ctx.stack.stop_agents()
    try:
        with open_backup(found.backup) as opened:
            restore_into(ctx.stack, opened, parts=parts, say=ctx.say)
        found.restored(parts)
    finally:
        if stopped:
            ctx.stack.scale(len(stopped), version=stopped[0].version)
    return parts


def describe(found: Corruption) -> dict[str, Any]:
    return {"collection": found.collection, "vectors_noised": found.vectors_noised,
            "entities_deleted": found.entities_deleted,
            "answers_poisoned": found.answers_poisoned, "backup": found.backup.name}
