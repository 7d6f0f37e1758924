"""The knowledge base in Milvus: search for the chat flow, a check for ``/health``.

pymilvus' ``MilvusClient`` is synchronous, so every call runs in a worker thread
(``anyio.to_thread``) and the event loop keeps serving other requests. The client is
created lazily and dropped after a failure, so a replica started before Milvus (or
living through a Milvus restart) recovers without a restart of its own. pymilvus is
imported only when a client is made: unit tests with a fake store never load grpc.

Example:
    >>> store = MilvusVectorStore(
    ...     VectorStoreSection(collection="kb"), client_factory=lambda uri, timeout: None)
    >>> store.collection
    'kb'
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread

from agentverify.seed import VectorStoreSection

__all__ = [
    "OUTPUT_FIELDS",
    "MilvusVectorStore",
    "Passage",
    "VectorStore",
    "VectorStoreError",
    "make_milvus_client",
    "short_error",
]

OUTPUT_FIELDS = ["title", "source", "text"]


class VectorStoreError(Exception):
    """Milvus did not answer, or the knowledge collection is missing."""


@dataclass(frozen=True)
class Passage:
    """One retrieved passage of the knowledge base, with its cosine similarity."""

    id: int
    title: str
    source: str
    text: str
    score: float


@runtime_checkable
class VectorStore(Protocol):
    """What the agent needs from a vector store (fakes implement this in unit tests)."""

    async def search(self, vector: Sequence[float], top_k: int) -> list[Passage]:
        """The ``top_k`` passages nearest to ``vector``, best first."""
        ...

    async def check(self, timeout: float) -> None:
        """Return if the store answers and holds the knowledge collection, else raise."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


ClientFactory = Callable[[str, float], Any]


def make_milvus_client(uri: str, timeout: float) -> Any:
    """Connect a ``pymilvus.MilvusClient`` (imported here, not at module import)."""
    from pymilvus import MilvusClient

    if not logging.getLogger("agentverify.reference_agent").isEnabledFor(logging.DEBUG):
        # pymilvus logs a full traceback at ERROR for every failed call (Milvus down
        # means one per request); the store raises one clear line instead.
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    return MilvusClient(uri=uri, timeout=timeout)


class MilvusVectorStore:
    """A :class:`VectorStore` over one Milvus collection.

    Args:
        settings: The ``vector_store`` section (host, port, collection, timeout).
        client_factory: ``(uri, timeout) -> MilvusClient``; injectable for tests.
    """

    def __init__(
        self,
        settings: VectorStoreSection,
        client_factory: ClientFactory = make_milvus_client,
    ) -> None:
        """Create the store without connecting; see the class docstring."""
        self._settings = settings
        self._factory = client_factory
        self._client: Any = None
        self._loaded = False
        self._lock = threading.Lock()

    @property
    def collection(self) -> str:
        """The collection searched."""
        return self._settings.collection

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory(self._settings.uri, self._settings.timeout)
                self._loaded = False
            return self._client

    def _drop_client(self, client: Any) -> None:
        with self._lock:
            if self._client is client:
                self._client = None
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing a broken client may fail; it is gone anyway
            pass

    def _call(self, action: str, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(client)`` in this thread, mapping every failure to VectorStoreError."""
        client = None
        try:
            client = self._get_client()
            return fn(client)
        except VectorStoreError:
            raise
        except Exception as exc:  # pymilvus raises MilvusException, grpc errors, OSError
            if client is not None:
                self._drop_client(client)
            raise VectorStoreError(
                f"Milvus {self._settings.host}:{self._settings.port} {action} failed: "
                f"{short_error(exc)}"
            ) from exc

    def _search_sync(self, vector: Sequence[float], top_k: int) -> list[Passage]:
        timeout = self._settings.timeout

        def run(client: Any) -> Any:
            if not self._loaded:
                # Idempotent; a real Milvus refuses to search an unloaded collection
                # (e.g. after a restore), Milvus Lite loads on its own.
                client.load_collection(self.collection, timeout=timeout)
                self._loaded = True
            return client.search(
                self.collection,
                data=[list(vector)],
                limit=top_k,
                output_fields=OUTPUT_FIELDS,
                search_params={"metric_type": "COSINE"},
                timeout=timeout,
            )

        hits = self._call("search", run)
        passages = []
        for hit in hits[0] if hits else []:
            entity = hit.get("entity") or {}
            passages.append(
                Passage(
                    id=int(hit.get("id", 0)),
                    title=str(entity.get("title", "")),
                    source=str(entity.get("source", "")),
                    text=str(entity.get("text", "")),
                    score=float(hit.get("distance", 0.0)),
                )
            )
        return passages

    async def search(self, vector: Sequence[float], top_k: int) -> list[Passage]:
        """The ``top_k`` nearest passages by cosine similarity, best first.

        Raises:
            VectorStoreError: Milvus failed or the collection is missing.
        """
        return await anyio.to_thread.run_sync(self._search_sync, vector, top_k)

    def _check_sync(self, timeout: float) -> None:
        exists = self._call(
            "has_collection",
            lambda client: client.has_collection(self.collection, timeout=timeout),
        )
        if not exists:
            raise VectorStoreError(
                f"Milvus {self._settings.host}:{self._settings.port} has no collection "
                f"{self.collection!r} (run the ingest first)"
            )

    async def check(self, timeout: float) -> None:
        """Raise :class:`VectorStoreError` unless Milvus holds the collection."""
        await anyio.to_thread.run_sync(self._check_sync, timeout, abandon_on_cancel=True)

    async def warm_up(self) -> None:
        """Import pymilvus in a worker thread (about 1.5 s) without connecting.

        Done at start-up so the first ``/health`` check is not spent importing grpc
        inside its 2 s budget.
        """
        await anyio.to_thread.run_sync(_import_pymilvus)

    async def close(self) -> None:
        """Close the client, if one was made."""
        client = self._client
        if client is not None:
            await anyio.to_thread.run_sync(self._drop_client, client)


def _import_pymilvus() -> None:
    import pymilvus  # noqa: F401 - imported for its side effect of being loaded


def short_error(exc: BaseException) -> str:
    """One line for an exception; pymilvus' MilvusException keeps it in ``.message``."""
    message = getattr(exc, "message", None)
    text = str(message if isinstance(message, str) and message else exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
