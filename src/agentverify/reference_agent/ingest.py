"""Load the knowledge base into Milvus: ``python -m agentverify.reference_agent.ingest``.

Usage::

    python -m agentverify.reference_agent.ingest --config config.yaml --knowledge DIR

Runs once at deploy, before the replicas start. Every ``*.md`` / ``*.txt`` in DIR is
split into passages (blank-line paragraphs, short ones merged, long ones cut at
sentence ends), each tagged with its document's first heading (``title``) and file
name (``source``). Passages are embedded through the configured LLM embeddings API in
batches, and upserted with a stable id (sha256 of source + passage index), so running
it again leaves the same rows. Passages of the ingested documents that no longer exist
(a document got shorter) are deleted.

Environment overrides are those of the app (``MILVUS_HOST``, ``MILVUS_PORT``,
``OPENAI_BASE_URL``, the API key variable). Prints one line
``ingested N passages from M documents into COLLECTION`` and exits 0; on any error it
prints one line on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agentverify.reference_agent.llm import LLMClient, LLMEndpoint, LLMError, RetryPolicy
from agentverify.reference_agent.settings import AgentConfigError, AgentSettings, load_settings
from agentverify.reference_agent.vectors import short_error

__all__ = [
    "Document",
    "IngestError",
    "PassageRow",
    "ingest",
    "load_documents",
    "main",
    "split_passages",
    "stable_id",
]

MIN_PASSAGE_CHARS = 300
MAX_PASSAGE_CHARS = 1500
TITLE_MAX = 500
TEXT_MAX_LENGTH = 8192
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class IngestError(Exception):
    """The ingest cannot finish; the message is the one line shown to the user."""


@dataclass(frozen=True)
class Document:
    """One knowledge file."""

    source: str
    title: str
    text: str


@dataclass(frozen=True)
class PassageRow:
    """One passage as stored in Milvus (without its vector)."""

    id: int
    title: str
    source: str
    text: str


def stable_id(source: str, index: int) -> int:
    """A positive INT64 id from sha256(source + passage index); stable across runs.

    Example:
        >>> stable_id("a.md", 0) == stable_id("a.md", 0) != stable_id("a.md", 1)
        True
    """
    digest = hashlib.sha256(f"{source}\n{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def _title_of(text: str, fallback: str) -> str:
    for line in text.splitlines():
        match = _HEADING.match(line)
        if match:
            return match.group(1).strip()[:TITLE_MAX]
    return fallback[:TITLE_MAX]


def _cut(paragraph: str, limit: int) -> list[str]:
    """Split an over-long paragraph at sentence ends (hard cut as a last resort)."""
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        while len(sentence) > limit:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:limit])
            sentence = sentence[limit:]
        if current and len(current) + 1 + len(sentence) > limit:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        pieces.append(current)
    return pieces


def split_passages(
    text: str, min_chars: int = MIN_PASSAGE_CHARS, max_chars: int = MAX_PASSAGE_CHARS
) -> list[str]:
    """Split a document into passages of roughly ``min_chars``..``max_chars``.

    Paragraphs are separated by blank lines; consecutive short ones are merged (a lone
    heading always joins the paragraph after it) and a passage never exceeds
    ``max_chars``.

    Example:
        >>> split_passages("# T\\n\\nshort one.\\n\\nshort two.", min_chars=50)
        ['# T\\n\\nshort one.\\n\\nshort two.']
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for paragraph in paragraphs:
        pieces.extend(_cut(paragraph, max_chars) if len(paragraph) > max_chars else [paragraph])
    passages: list[str] = []
    current = ""
    for piece in pieces:
        if not current:
            current = piece
        elif len(current) + 2 + len(piece) <= max_chars and (
            len(current) < min_chars or _HEADING.match(current.splitlines()[-1])
        ):
            current = f"{current}\n\n{piece}"
        else:
            passages.append(current)
            current = piece
    if current:
        passages.append(current)
    return passages


def load_documents(directory: Path) -> list[Document]:
    """Read every ``*.md`` / ``*.txt`` under ``directory`` (sorted, recursively).

    Raises:
        IngestError: The directory is missing or holds no non-empty document.
    """
    if not directory.is_dir():
        raise IngestError(f"knowledge directory {directory} does not exist")
    files = sorted(
        p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in {".md", ".txt"}
    )
    documents = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise IngestError(f"cannot read {path}: {exc}") from exc
        if not text.strip():
            continue
        source = path.relative_to(directory).as_posix()
        fallback = path.stem.replace("_", " ").replace("-", " ").strip().capitalize()
        documents.append(Document(source=source, title=_title_of(text, fallback), text=text))
    if not documents:
        raise IngestError(f"knowledge directory {directory} holds no non-empty *.md or *.txt")
    return documents


def passages_of(documents: Iterable[Document]) -> list[PassageRow]:
    """All passages of ``documents`` with their stable ids."""
    rows = []
    for doc in documents:
        for index, text in enumerate(split_passages(doc.text)):
            rows.append(PassageRow(stable_id(doc.source, index), doc.title, doc.source, text))
    return rows


def embedding_input(row: PassageRow) -> str:
    """What is embedded for a passage: its title, then its text."""
    return f"{row.title}\n\n{row.text}"


async def embed_rows(
    settings: AgentSettings,
    rows: Sequence[PassageRow],
    batch_size: int = 32,
    http: httpx.AsyncClient | None = None,
) -> list[list[float]]:
    """Embed every passage in batches through the configured embeddings API.

    Raises:
        IngestError: The API failed after its retries.
    """
    model = settings.model
    endpoint = LLMEndpoint("primary", model.model_name, settings.base_url, model.api_key)
    vectors: list[list[float]] = []
    async with httpx.AsyncClient() if http is None else _borrowed(http) as client:
        llm = LLMClient(client, RetryPolicy(retries=model.retry_count), timeout=model.timeout)
        for start in range(0, len(rows), batch_size):
            batch = [embedding_input(r) for r in rows[start : start + batch_size]]
            try:
                result = await llm.embed(
                    endpoint, batch, model=settings.cost.embedding_model,
                    dimensions=settings.vector_store.dim,
                )
            except LLMError as exc:
                raise IngestError(f"embedding failed: {exc}") from exc
            vectors.extend(result.vectors)
    return vectors


class _borrowed:
    """An async context manager that yields a client without closing it."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def __aenter__(self) -> httpx.AsyncClient:
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        return None


def _create_collection(client: Any, settings: AgentSettings) -> None:
    from pymilvus import DataType, MilvusClient

    vs = settings.vector_store
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("title", DataType.VARCHAR, max_length=2048)
    schema.add_field("source", DataType.VARCHAR, max_length=2048)
    schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX_LENGTH)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vs.dim)
    index = client.prepare_index_params()
    index.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
    client.create_collection(vs.collection, schema=schema, index_params=index)


def _collection_dim(client: Any, collection: str) -> int | None:
    info = client.describe_collection(collection)
    for f in info.get("fields", []):
        if f.get("name") == "vector":
            dim = (f.get("params") or {}).get("dim")
            return int(dim) if dim is not None else None
    return None


def store_rows(
    settings: AgentSettings, rows: Sequence[PassageRow], vectors: Sequence[Sequence[float]]
) -> None:
    """Create the collection if missing, upsert the rows, drop stale passages.

    Raises:
        IngestError: Milvus is unreachable or the collection's dimension differs.
    """
    from pymilvus import MilvusClient

    # pymilvus logs a traceback of its own for a failed call; we print one line.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    vs = settings.vector_store
    where = f"Milvus {vs.host}:{vs.port}"
    try:
        client = MilvusClient(uri=vs.uri, timeout=vs.timeout)
    except Exception as exc:  # MilvusException, grpc errors
        raise IngestError(f"{where} unreachable: {short_error(exc)}") from exc
    try:
        if not client.has_collection(vs.collection):
            _create_collection(client, settings)
        else:
            dim = _collection_dim(client, vs.collection)
            if dim is not None and dim != vs.dim:
                raise IngestError(
                    f"{where}: collection {vs.collection!r} has vectors of dim {dim} but "
                    f"vector_store.dim is {vs.dim}; drop the collection or fix the config"
                )
        data = [
            {"id": r.id, "title": r.title, "source": r.source, "text": r.text,
             "vector": list(v)}
            for r, v in zip(rows, vectors, strict=True)
        ]
        for start in range(0, len(data), 256):
            client.upsert(vs.collection, data[start : start + 256])
        sources = sorted({r.source for r in rows})
        keep = [r.id for r in rows]
        client.delete(
            vs.collection,
            filter=f"source in {_milvus_list(sources)} and id not in {keep}",
        )
        client.flush(vs.collection)
    except IngestError:
        raise
    except Exception as exc:
        raise IngestError(f"{where} {vs.collection!r}: {short_error(exc)}") from exc
    finally:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - nothing left to do with a broken client
            pass


def _milvus_list(values: Sequence[str]) -> str:
    quoted = (
        '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values
    )
    return "[" + ", ".join(quoted) + "]"


def ingest(settings: AgentSettings, directory: Path, batch_size: int = 32) -> tuple[int, int]:
    """Split, embed and store every document of ``directory``.

    Returns:
        (passages, documents) ingested.

    Raises:
        IngestError: With the one line to show.
    """
    documents = load_documents(directory)
    rows = passages_of(documents)
    vectors = asyncio.run(embed_rows(settings, rows, batch_size))
    store_rows(settings, rows, vectors)
    return len(rows), len(documents)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m agentverify.reference_agent.ingest",
        description="Embed a knowledge directory into the agent's Milvus collection.",
    )
    parser.add_argument("--config", type=Path, default=None,
                        help="the agent's config.yaml (default: $AGENT_CONFIG, else defaults)")
    parser.add_argument("--knowledge", type=Path, required=True,
                        help="directory of *.md / *.txt documents")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="inputs per embeddings call (default 32)")
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise IngestError(f"--batch-size must be >= 1, got {args.batch_size}")
        settings = load_settings(args.config)
        passages, documents = ingest(settings, args.knowledge, args.batch_size)
    except (IngestError, AgentConfigError) as exc:
        print(f"ingest: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"ingested {passages} passages from {documents} documents into "
        f"{settings.vector_store.collection}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
