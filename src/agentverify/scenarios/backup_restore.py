"""The backup and restore rehearsal (seed §4 ``backup()``, §5 data corruption).

A backup is only as good as its restore, so this rehearsal restores into a fresh stack
and measures what came back. Steps:

==========================  ===================================================================
``seed_data``               known Redis keys of every type, with and without TTLs, and a few
                            extra entities in the knowledge collection (removed afterwards)
``backup``                  Redis SAVE + RDB, every Milvus collection, one manifest, one
                            ``backup_<UTC>.tar.gz`` under ``reports/backups``
``restore_verify``          verify the archive, start a fresh stack on it (the data stores
                            first, restored, then the agents; a whole stack is restored into
                            once up), compare: keys, values, TTLs, entities, vectors, search
                            results, and the known answers: the same questions asked through
                            the agent's contract on the live and the restored stack cite the
                            same sources
``tamper_archive``          write a damaged copy of the archive (truncated, a flipped byte, ...)
``restore_expect_refused``  restoring each damaged copy into the *live* stack must be refused
                            before anything live is touched (proven by fingerprinting it)
==========================  ===================================================================

The archive format and the restore itself live in :mod:`agentverify.backup`.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from agentverify import _http
from agentverify.backup import (
    TAMPER_MODES,
    backup_stack,
    compare_with,
    live_fingerprint,
    milvus_session,
    open_backup,
    restore_into,
    restore_on_start,
    service_name,
    tamper,
)
from agentverify.contract import AGENTVERIFY_KEY_PREFIX
from agentverify.errors import BackupRestoreError, ScenarioError
from agentverify.gates import Inconclusive
from agentverify.scenarios.registry import StepParams, step
from agentverify.scenarios.smoke import load_prompts

if TYPE_CHECKING:
    from agentverify.scenarios.runner import ScenarioContext

__all__ = ["ARCHIVE_KEY"]

#: where the scenario's state keeps the last archive written (and verified) by ``backup``
ARCHIVE_KEY = "backup_archive"
_ARCHIVE = ARCHIVE_KEY
_TAMPERED = "tampered_archives"
_KINDS = ("string", "hash", "list", "set", "zset", "stream")


# ------------------------------------------------------------------------------ seed_data


class SeedParams(StepParams):
    keys: int = Field(200, ge=0, le=1_000_000, description="Redis keys to write")
    ttl_ratio: float = Field(0.5, ge=0.0, le=1.0, description="share of keys with a TTL")
    ttl_s: int = Field(3600, ge=60, description="longest TTL; TTLs spread over its 2nd half")
    entities: int = Field(16, ge=0, le=100_000,
                          description="extra entities in the knowledge collection")
    collection: str | None = Field(None, description="default: vector_store.collection")
    prefix: str = Field(AGENTVERIFY_KEY_PREFIX + "backup:", pattern="^" + AGENTVERIFY_KEY_PREFIX,
                        description="agentverify's own namespace: never the agent's keys")
    cleanup: bool = Field(True, description="remove the seeded data after the scenario")


def _seed_redis(url: str, params: SeedParams) -> int:
    import redis

    rng = random.Random(20240101)
    with_ttl = int(round(params.keys * params.ttl_ratio))
    try:
        with redis.Redis.from_url(url) as client:
            pipe = client.pipeline(transaction=False)
            for i in range(params.keys):
                kind = _KINDS[i % len(_KINDS)]
                key = f"{params.prefix}{kind}:{i}"
                pipe.delete(key)
                if kind == "string":
                    # every 12th string is binary: RDB round trips must be byte-exact
                    value = bytes(rng.randrange(256) for _ in range(32)) if i % 12 == 0 \
                        else f"value {i} " + "x" * (i % 50)
                    pipe.set(key, value)
                elif kind == "hash":
                    pipe.hset(key, mapping={f"f{j}": f"{i}-{j}" for j in range(1 + i % 7)})
                elif kind == "list":
                    pipe.rpush(key, *[f"item {j}" for j in range(1 + i % 9)])
                elif kind == "set":
                    pipe.sadd(key, *[f"m{j}" for j in range(1 + i % 11)])
                elif kind == "zset":
                    pipe.zadd(key, {f"m{j}": j * 1.25 + i for j in range(1 + i % 5)})
                else:
                    for j in range(1 + i % 3):
                        pipe.xadd(key, {"n": str(j), "i": str(i)})
                if i < with_ttl:
                    pipe.expire(key, params.ttl_s // 2 + rng.randrange(params.ttl_s // 2 + 1))
            pipe.execute()
    except redis.RedisError as exc:
        raise BackupRestoreError(f"seeding Redis at {url}: {exc}") from exc
    return params.keys


def _delete_seeded_keys(url: str, prefix: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(batch), 500):
            client.delete(*batch[start:start + 500])


def _seed_value(field: dict[str, Any], i: int, rng: random.Random) -> Any:
    kind = str(getattr(field["type"], "name", field["type"]))
    params = field.get("params") or {}
    if kind == "FLOAT_VECTOR":
        vec = [rng.gauss(0.0, 1.0) for _ in range(int(params["dim"]))]
        norm = sum(x * x for x in vec) ** 0.5 or 1.0
        return [x / norm for x in vec]
    if kind == "VARCHAR":
        return f"agentverify backup seed {i}"[: int(params.get("max_length", 64))]
    if kind in {"INT8", "INT16", "INT32", "INT64"}:
        return i
    if kind in {"FLOAT", "DOUBLE"}:
        return i * 0.5
    if kind == "BOOL":
        return i % 2 == 0
    if kind == "JSON":
        return {"seed": i}
    if field.get("nullable"):
        return None
    raise BackupRestoreError(f"cannot make a seed value for field {field['name']!r} ({kind})")


def _seed_milvus(uri: str, collection: str, params: SeedParams) -> list[Any]:
    with milvus_session(uri, f"seeding Milvus at {uri}: {collection}") as client:
        if not client.has_collection(collection):
            raise BackupRestoreError(
                f"Milvus at {uri}: collection {collection!r} does not exist (did the "
                f"ingest job run?)")
        fields = client.describe_collection(collection)["fields"]
        pk = next(f for f in fields if f.get("is_primary"))
        pk_kind = getattr(pk["type"], "name", str(pk["type"]))
        rng = random.Random(20240102)
        rows, ids = [], []
        for i in range(params.entities):
            # negative ids cannot collide with the ingest job's (positive) stable ids
            ident: Any = -(1_000_000 + i) if pk_kind == "INT64" else f"{params.prefix}{i}"
            row = {f["name"]: _seed_value(f, i, rng) for f in fields if f is not pk
                   and not f.get("auto_id")}
            row[pk["name"]] = ident
            rows.append(row)
            ids.append(ident)
        if rows:
            client.upsert(collection, rows)
            client.flush(collection)
        return ids


def _delete_entities(uri: str, collection: str, ids: list[Any]) -> None:
    with milvus_session(uri, f"Milvus at {uri}") as client:
        client.delete(collection, ids=ids)
        client.flush(collection)


@step("seed_data", params=SeedParams, facts=("seeded_keys", "seeded_entities"))
def seed_data(ctx: ScenarioContext, params: SeedParams) -> dict[str, Any]:
    """Known Redis keys (every type, with and without TTLs) and extra Milvus entities."""
    def url(role: str) -> str:
        return str(ctx.stack.service(service_name(ctx.stack, role)).url())

    redis_url, milvus_uri = url("cache"), url("vector_store")
    collection = params.collection or ctx.config.vector_store.collection
    if params.cleanup:
        ctx.defer("remove seeded Redis keys",
                  lambda: _delete_seeded_keys(url("cache"), params.prefix))
    keys = _seed_redis(redis_url, params)
    ids = _seed_milvus(milvus_uri, collection, params) if params.entities else []
    if params.cleanup and ids:
        ctx.defer("remove seeded Milvus entities",
                  lambda: _delete_entities(url("vector_store"), collection, ids))
    ctx.say(f"  seeded {keys} Redis keys ({params.prefix}*, "
            f"{int(round(keys * params.ttl_ratio))} with a TTL) and {len(ids)} entities "
            f"in {collection}")
    return {"seeded_keys": keys, "seeded_entities": len(ids)}


# ------------------------------------------------------------------------------ backup


class BackupParams(StepParams):
    dir: str | None = Field(None, description="where the archive goes (default: "
                                              "<report dir>/backups)")
    search_queries: int = Field(5, ge=0, le=100, description="fixed queries per collection")
    search_limit: int = Field(5, ge=1, le=100, description="hits per fixed query")


@step("backup", params=BackupParams,
      facts=("backup_seconds", "archive_bytes", "redis_keys", "entities",
             "backup_collections", "backup_search_queries"))
def backup(ctx: ScenarioContext, params: BackupParams) -> dict[str, Any]:
    """The seed's backup(): Redis SAVE + every Milvus collection into one tar.gz."""
    directory = ctx.config.path(params.dir) if params.dir else \
        Path(ctx.report_dir) / "backups"
    result = backup_stack(ctx.stack, directory, say=ctx.say,
                          search_queries=params.search_queries,
                          search_limit=params.search_limit)
    ctx.state[_ARCHIVE] = result.path
    ctx.say(f"  wrote {result.path} ({result.archive_bytes:,} bytes) in "
            f"{result.seconds:.2f}s: {result.redis_keys} keys, {result.entities} entities")
    return {"backup_seconds": round(result.seconds, 3),
            "archive_bytes": result.archive_bytes,
            "redis_keys": result.redis_keys,
            "entities": result.entities,
            "backup_collections": len(result.manifest["milvus"]["collections"]),
            "backup_search_queries": len(result.manifest["search"])}


def _archive(ctx: ScenarioContext, given: str | None) -> Path:
    if given:
        return ctx.config.path(given)
    path = ctx.state.get(_ARCHIVE)
    if path is None:
        raise ScenarioError("no archive to restore: put a 'backup' step before this one, "
                            "or give 'archive: PATH'")
    return Path(path)


# ------------------------------------------------------------------------------ restore


class RestoreParams(StepParams):
    archive: str | None = Field(None, description="default: the one the backup step wrote")
    target: Literal["fresh", "live"] = Field(
        "fresh", description="fresh: a new stack of its own; live: the scenario's stack")
    fresh: Literal["serving", "data", "whole"] = Field(
        "serving", description="the fresh stack: serving = data stores, LLM, agents and nginx "
                               "(the known answers are asked of it), without monitoring or "
                               "the fault proxy; data = Redis and Milvus only (no known "
                               "answers); whole = every service")
    replicas: int = Field(1, ge=1, le=32, description="agent replicas of a whole fresh stack")
    batch_size: int = Field(512, ge=1, le=100_000)
    ttl_slack_s: float = Field(2.0, ge=0.0)
    score_tolerance: float = Field(1e-4, ge=0.0)
    vector_tolerance: float = Field(1e-6, ge=0.0)
    timeout_s: float = Field(60.0, gt=0.0)
    known_answers: int = Field(3, ge=0, le=100, description="questions asked of the live "
                               "and the restored stack, whose sources must agree")


RESTORE_FACTS = ("restore_seconds", "verify_seconds", "fresh_stack_seconds",
                 "keys_lost", "keys_changed", "keys_extra", "keys_expired", "keys_volatile",
                 "ttl_mismatches", "entities_lost", "entities_changed", "entities_extra",
                 "search_queries", "search_mismatches", "restored_keys", "restored_entities",
                 "known_answers", "known_answers_mismatched")


@step("restore_verify", params=RestoreParams, facts=RESTORE_FACTS)
def restore_verify(ctx: ScenarioContext, params: RestoreParams) -> dict[str, Any]:
    """Verify the archive, restore it into a fresh stack, and measure what came back."""
    path = _archive(ctx, params.archive)
    with open_backup(path) as opened:  # refuses a bad archive before any stack is touched
        ctx.say(f"  {path.name}: verified ({len(opened.manifest['files'])} members)")
        if params.target == "live":
            seconds = restore_into(ctx.stack, opened, say=ctx.say,
                                   batch_size=params.batch_size, timeout=params.timeout_s)
            return _compare(ctx, ctx.stack, opened, params, 0.0, seconds)
        t0 = time.monotonic()
        only = {"serving": ("lb",), "data": ("redis", "milvus"), "whole": None}[params.fresh]
        overrides: dict[str, Any] = {"stack.replicas": params.replicas}
        if params.fresh == "serving":
            overrides["stack.faults.enabled"] = False
        # a partial stack starts on the archive (its agents after the data, no ingest); a
        # whole one comes up as deployed (its ingest ran) and is restored into
        staged = params.fresh != "whole"
        restored: dict[str, Callable[[], float]] = {}

        def prepare(stack: Any) -> None:
            restored["seconds"] = restore_on_start(stack, opened, say=ctx.say,
                                                   batch_size=params.batch_size,
                                                   timeout=params.timeout_s)

        with ctx.new_stack(only=only, jobs=not staged, prepare=prepare if staged else None,
                           **overrides) as fresh:
            up = time.monotonic() - t0
            if staged:
                seconds = restored["seconds"]()
                ctx.say(f"  fresh stack up on the archive in {up:.1f}s (restore "
                        f"{seconds:.2f}s of it)")
            else:
                ctx.say(f"  fresh stack up in {up:.1f}s")
                seconds = restore_into(fresh, opened, say=ctx.say,
                                       batch_size=params.batch_size, timeout=params.timeout_s)
            facts = _compare(ctx, fresh, opened, params, up, seconds)
            if params.fresh != "data":
                facts.update(_known_answers(ctx, fresh, params.known_answers))
            return facts


def _known_answers(ctx: ScenarioContext, restored: Any, count: int) -> dict[str, Any]:
    """Ask the same fresh questions on the live and on the restored stack, through the
    agent's contract: a restore that lost or damaged the knowledge base cites other
    sources (or none)."""
    if not ctx.contract.maps("sources"):
        why = Inconclusive("stack.agent.contract.reply.sources is null: the reply does not "
                           "say which sources the answer used")
        return {"known_answers": why, "known_answers_mismatched": why}
    prompts = load_prompts(ctx.config.path(ctx.config.load.prompts))[:count]
    tag = uuid.uuid4().hex[:8]  # never cached on either stack: retrieval answers both
    mismatched = 0
    with _http.new_client(timeout=30.0) as client:
        for i, prompt in enumerate(prompts):
            question = f"{prompt} (known answer {tag}-{i})"
            live = ctx.contract.ask(client, question, base_url=ctx.stack.lb_url)
            after = ctx.contract.ask(client, question, base_url=restored.lb_url)
            if not (live.ok and after.ok and live.sources == after.sources):
                mismatched += 1
                ctx.say(f"  known answer {i}: live {live.describe()} {list(live.sources or ())}"
                        f", restored {after.describe()} {list(after.sources or ())}")
    ctx.say(f"  {len(prompts)} known answers asked of both stacks: {mismatched} differ")
    return {"known_answers": len(prompts), "known_answers_mismatched": mismatched}


def _compare(ctx: ScenarioContext, target: Any, opened: Any, params: RestoreParams,
             up_seconds: float, seconds: float) -> dict[str, Any]:
    """What came back: the restored ``target`` measured against the archive."""
    ctx.say(f"  restored in {seconds:.2f}s; comparing with the archive")
    t0 = time.monotonic()
    cmp = compare_with(target, opened, ttl_slack_s=params.ttl_slack_s,
                       vector_tolerance=params.vector_tolerance,
                       score_tolerance=params.score_tolerance)
    verify_seconds = time.monotonic() - t0
    for problem in cmp.problems:
        ctx.say(f"  {problem}")
    ctx.say(f"  {cmp.redis_keys} keys ({cmp.keys_lost} lost, {cmp.keys_changed} changed, "
            f"{cmp.ttl_mismatches} TTL mismatches, {cmp.keys_expired} expired as due), "
            f"{cmp.entities} entities ({cmp.entities_lost} lost, {cmp.entities_changed} "
            f"changed), {cmp.search_queries} searches ({cmp.search_mismatches} differ)")
    facts = cmp.facts()
    facts["restored_keys"] = facts.pop("redis_keys")
    facts["restored_entities"] = facts.pop("entities")
    facts.update(restore_seconds=round(seconds, 3), verify_seconds=round(verify_seconds, 3),
                 fresh_stack_seconds=round(up_seconds, 3))
    return facts


# ------------------------------------------------------------------------------ tampering


class TamperParams(StepParams):
    mode: Literal[TAMPER_MODES]  # type: ignore[valid-type]
    archive: str | None = Field(None, description="default: the one the backup step wrote")


@step("tamper_archive", params=TamperParams)
def tamper_archive(ctx: ScenarioContext, params: TamperParams) -> dict[str, Any]:
    """Write a damaged copy of the archive for ``restore_expect_refused`` to try."""
    src = _archive(ctx, params.archive)
    name = src.name.removesuffix(".tar.gz")
    dst = src.parent / "tampered" / f"{name}.{params.mode}.tar.gz"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tamper(src, dst, params.mode)
    ctx.state.setdefault(_TAMPERED, []).append(dst)
    ctx.say(f"  {params.mode}: {dst}")
    return {}


class RefusedParams(StepParams):
    archives: list[str] = Field(default_factory=list,
                                description="default: every tamper_archive copy")


@step("restore_expect_refused", params=RefusedParams,
      facts=("tampered_archives", "tampered_refused", "tampered_refused_count",
             "live_untouched"))
def restore_expect_refused(ctx: ScenarioContext, params: RefusedParams) -> dict[str, Any]:
    """Restoring each damaged archive into the live stack is refused, and nothing changes."""
    paths = [ctx.config.path(p) for p in params.archives] or \
        list(ctx.state.get(_TAMPERED, []))
    if not paths:
        raise ScenarioError("no damaged archive to try: put 'tamper_archive' steps before "
                            "this one, or give 'archives: [PATH, ...]'")
    before = live_fingerprint(ctx.stack)
    refused = 0
    for path in paths:
        try:
            with open_backup(path) as opened:
                restore_into(ctx.stack, opened, say=ctx.say)
        except BackupRestoreError as exc:
            refused += 1
            ctx.say(f"  refused: {exc}")
        else:
            ctx.say(f"  NOT refused: {path.name} was restored into the live stack")
    after = live_fingerprint(ctx.stack)
    changed = sorted(k for k in before if before[k] != after.get(k))
    if changed:
        ctx.say(f"  the live stack changed: {', '.join(changed)}")
    return {"tampered_archives": len(paths), "tampered_refused": refused == len(paths),
            "tampered_refused_count": refused, "live_untouched": not changed}
