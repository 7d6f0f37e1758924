"""The Milvus part of a backup: collections exported and rebuilt through pymilvus.

What is here: :func:`milvus_session` (a client that is always closed, its errors one
line), :func:`backup_milvus` (every collection's schema, indexes and entities, vectors
included, read with ``query_iterator`` so a real Milvus and Milvus Lite back up alike,
plus the fixed search set: queries with the stored vectors of evenly spaced entities
and the hits they return now), :func:`restore_milvus` (each collection dropped,
recreated with its schema and indexes, refilled in batches) and :func:`compare_milvus`
(entities and search results of a restored Milvus against the archive).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agentverify.backup.archive import OpenedBackup, dump_line, load_line, read_jsonl
from agentverify.backup.comparison import Comparison, values_close
from agentverify.errors import BackupRestoreError

__all__ = ["backup_milvus", "compare_milvus", "connect_milvus", "count_entities", "entities",
           "milvus_error", "milvus_session", "restore_milvus", "schema_of"]

_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Values pymilvus reports per index that describe its state, not how to build it.
_INDEX_STATE_KEYS = {"total_rows", "indexed_rows", "pending_index_rows", "state",
                     "index_state_fail_reason", "field_name", "index_name",
                     "index_type", "metric_type"}


def connect_milvus(uri: str) -> Any:
    """A pymilvus ``MilvusClient`` for ``uri`` (prefer :func:`milvus_session`)."""
    from pymilvus import MilvusClient

    # pymilvus logs a traceback of its own for every failed call; we raise one line.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    # dedicated: a connection of its own, closed with the session. pymilvus 3 shares one
    # connection per URI across the process and revives it after 30 s idle; Milvus Lite
    # has by then sent GOAWAY "too_many_pings" on it, and the revival fails ("Fail
    # connecting to server"): seen when a drill backs up minutes after an earlier session.
    return MilvusClient(uri=uri, timeout=60.0, dedicated=True)


def milvus_error(where: str, exc: BaseException) -> BackupRestoreError:
    """A pymilvus / grpc error as one line naming ``where``."""
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


def schema_of(client: Any, name: str) -> dict[str, Any]:
    """A collection's schema as the backup records it: ``fields`` (with ``is_primary``,
    ``type``), ``indexes``, ``primary`` (the key field) and ``vectors`` (float vector
    fields)."""
    schema = _describe(client, name)
    return {**schema, "primary": _primary(schema), "vectors": _float_vector_fields(schema)}


def entities(client: Any, name: str, schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every entity of a collection, every field (vectors included)."""
    return _iterate(client, name, schema)


def _normalize(entity: dict[str, Any]) -> dict[str, Any]:
    """An entity as it reads back from JSON (so live and archived ones compare)."""
    return load_line(dump_line(dict(entity)))


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


def backup_milvus(uri: str, out: Path, say: Callable[[str], None], queries: int,
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
                    fh.write(dump_line(entity) + "\n")
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


def count_entities(client: Any, name: str) -> int:
    """``count(*)`` of a collection."""
    rows = client.query(name, filter="", output_fields=["count(*)"])
    return int(rows[0]["count(*)"]) if rows else 0


def restore_milvus(uri: str, backup: OpenedBackup, batch_size: int, timeout: float,
                   say: Callable[[str], None]) -> None:
    """Drop, recreate (schema, indexes, properties) and refill every archived collection;
    wait until every entity is visible."""
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
            for entity in read_jsonl(cdir / "entities.jsonl"):
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
            while (have := count_entities(client, name)) != want:
                if time.monotonic() > deadline:
                    raise BackupRestoreError(
                        f"Milvus at {uri}: {name}: {have} of {want} entities visible "
                        f"{timeout:.0f}s after the restore")
                time.sleep(0.2)
            say(f"  milvus: {name}: recreated, {want} entities inserted")


def compare_milvus(uri: str, backup: OpenedBackup, cmp: Comparison, tol: float,
                   score_tol: float) -> None:
    """Count into ``cmp`` the entities lost, changed or extra and the searches whose hits
    differ from the archive's (``tol``: vectors and floats, ``score_tol``: scores)."""
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
            for orig in read_jsonl(cdir / "entities.jsonl"):
                key = orig[pk]
                seen.add(key)
                got = live.get(key)
                if got is None:
                    cmp.entities_lost += 1
                    cmp.note(f"lost: milvus {name} {pk}={key!r}")
                elif not values_close(orig, got, tol):
                    cmp.entities_changed += 1
                    diff = sorted(f for f in set(orig) | set(got)
                                  if not values_close(orig.get(f), got.get(f), tol))
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
