"""The knowledge base: one Milvus collection of passages and their embeddings.

Schema (made by :func:`create_collection`, used by the ingest)::

    pk         INT64 primary key   stable: derived from the file name and section
    doc        VARCHAR(256)        the document's title (what answers cite)
    body       VARCHAR(8192)       the passage text
    embedding  FLOAT_VECTOR(dim)   cosine similarity (index AUTOINDEX)

pymilvus' ``MilvusClient`` is synchronous: the API runs its calls in worker threads so
the event loop keeps serving. The client is made on first use and dropped after an
error, so the agent recovers when Milvus comes back without being restarted.

Example:
    >>> Passage(doc="Warranty", body="Two years.", score=0.81).doc
    'Warranty'
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["KnowledgeBase", "KnowledgeError", "Passage", "connect", "create_collection", "FIELDS"]

#: Fields returned with each search hit.
FIELDS = ["doc", "body"]
DOC_MAX = 256
BODY_MAX = 8192


class KnowledgeError(Exception):
    """Milvus failed, or the collection is missing or not loadable; one line."""


@dataclass(frozen=True)
class Passage:
    """One retrieved passage with its cosine similarity to the question."""

    doc: str
    body: str
    score: float


def connect(uri: str, timeout: float) -> Any:
    """A ``pymilvus.MilvusClient`` on ``uri`` (pymilvus is imported here: it loads grpc)."""
    from pymilvus import MilvusClient

    # pymilvus logs a traceback at ERROR for every failed call; we report one line instead.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    return MilvusClient(uri=uri, timeout=timeout)


def create_collection(client: Any, name: str, dim: int) -> None:
    """Create the collection with the schema above and load it."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("doc", DataType.VARCHAR, max_length=DOC_MAX)
    schema.add_field("body", DataType.VARCHAR, max_length=BODY_MAX)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    index = client.prepare_index_params()
    index.add_index(field_name="embedding", index_type="AUTOINDEX", metric_type="COSINE")
    client.create_collection(name, schema=schema, index_params=index)
    client.load_collection(name)


def vector_dim(client: Any, name: str) -> int | None:
    """The ``embedding`` field's dimension of an existing collection (None if no such field)."""
    for field in client.describe_collection(name).get("fields", []):
        if field.get("name") == "embedding":
            return int(field.get("params", {}).get("dim", 0)) or None
    return None


def short(exc: BaseException) -> str:
    """One line for a pymilvus / grpc error (MilvusException keeps it in ``.message``)."""
    text = str(getattr(exc, "message", "") or exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class KnowledgeBase:
    """Search and health check over one collection.

    Args:
        uri: Milvus address, e.g. ``http://127.0.0.1:19530``.
        collection: The collection name.
        timeout: Seconds per Milvus call.
        factory: ``(uri, timeout) -> client``, replaceable in tests.

    Example:
        >>> kb = KnowledgeBase("http://127.0.0.1:1", "support_kb", 1.0, factory=lambda u, t: None)
        >>> kb.collection
        'support_kb'
    """

    def __init__(self, uri: str, collection: str, timeout: float,
                 factory: Callable[[str, float], Any] = connect) -> None:
        """Remember where Milvus is; nothing connects until the first call."""
        self.uri = uri
        self.collection = collection
        self._timeout = timeout
        self._factory = factory
        self._client: Any = None
        self._lock = threading.Lock()

    def _with_client(self, action: str, fn: Callable[[Any], Any]) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._factory(self.uri, self._timeout)
                except Exception as exc:  # grpc / pymilvus / OSError: Milvus is not there
                    raise KnowledgeError(f"Milvus at {self.uri}: cannot connect: {short(exc)}") from exc
            client = self._client
        try:
            return fn(client)
        except KnowledgeError:
            raise
        except Exception as exc:  # pymilvus raises MilvusException and grpc errors
            with self._lock:
                if self._client is client:
                    self._client = None
            _close_quietly(client)
            raise KnowledgeError(f"Milvus at {self.uri}: {action} failed: {short(exc)}") from exc

    def _ensure_loaded(self, client: Any) -> None:
        from pymilvus.client.types import LoadState

        state = client.get_load_state(self.collection, timeout=self._timeout).get("state")
        if state == LoadState.NotExist:
            raise KnowledgeError(f"Milvus at {self.uri}: no collection {self.collection!r} (run the ingest)")
        if state != LoadState.Loaded:
            # After a restore or a Milvus restart the collection may be released.
            client.load_collection(self.collection, timeout=self._timeout)

    def _search(self, vector: Sequence[float], top_k: int) -> list[Passage]:
        def run(client: Any) -> Any:
            self._ensure_loaded(client)
            return client.search(self.collection, data=[list(vector)], limit=top_k, output_fields=FIELDS,
                                 search_params={"metric_type": "COSINE"}, timeout=self._timeout)

        hits = self._with_client("search", run)
        return [Passage(doc=str(h["entity"].get("doc", "")), body=str(h["entity"].get("body", "")),
                        score=float(h.get("distance", 0.0)))
                for h in (hits[0] if hits else [])]

    async def search(self, vector: Sequence[float], top_k: int) -> list[Passage]:
        """The ``top_k`` passages nearest to ``vector``, best first.

        Raises:
            KnowledgeError: Milvus failed or the collection is missing.
        """
        return await asyncio.to_thread(self._search, vector, top_k)

    async def check(self) -> None:
        """Return if the collection exists and is loaded (loading it if need be), else raise."""
        await asyncio.wait_for(asyncio.to_thread(self._with_client, "load", self._ensure_loaded),
                               timeout=self._timeout + 1)

    async def close(self) -> None:
        """Close the client, if one was made."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(_close_quietly, client)


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - a broken client may fail to close; it is dropped anyway
        pass
