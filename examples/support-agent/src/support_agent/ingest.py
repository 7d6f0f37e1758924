"""``python -m support_agent.ingest --docs DIR``: load markdown documents into the knowledge base.

Every ``*.md`` file in DIR is one document: its ``# `` heading is the title answers cite;
the text before the first ``## `` and each ``## `` section are its passages. Each passage
gets a stable id (from the file name and its position), is embedded through the same
OpenAI-compatible API and settings as the agent (``SUPPORT_CONFIG``, ``OPENAI_*``) and
upserted into ``vector_store.collection`` at ``MILVUS_URI``. The collection is created when
missing and recreated when its vector size differs from ``vector_store.dim``; passages of
documents that are gone are deleted, so running it twice changes nothing.

It prints one line and exits 0, or prints one line on stderr and exits 1.

Example:
    >>> [p.pk for p in split_document("a.md", "# A\\nIntro.\\n## Part\\nText.")] == \\
    ...     [p.pk for p in split_document("a.md", "# A\\nIntro, edited.\\n## Part\\nText.")]
    True
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support_agent.config import ConfigError, Settings, load_settings
from support_agent.knowledge import BODY_MAX, DOC_MAX, connect, create_collection, short, vector_dim
from support_agent.llm import LLM, LLMError
from support_agent.metrics import Metrics

__all__ = ["IngestError", "Section", "ingest", "main", "read_documents", "split_document"]

_BATCH = 64  # texts per embeddings request


class IngestError(Exception):
    """The documents or the knowledge base are not usable; one line."""


@dataclass(frozen=True)
class Section:
    """One passage of a document, ready to embed."""

    pk: int
    doc: str
    body: str


def _stable_id(name: str, index: int) -> int:
    # 63 bits of a hash: a positive INT64 that is the same on every run.
    return int.from_bytes(hashlib.sha256(f"{name}#{index}".encode()).digest()[:8], "big") >> 1


def split_document(name: str, text: str) -> list[Section]:
    """The passages of one markdown document named ``name``.

    Example:
        >>> [s.body for s in split_document("x.md", "# Title\\nIntro.\\n## Step one\\nDo it.")]
        ['Intro.', 'Step one\\nDo it.']
    """
    title = Path(name).stem.replace("-", " ").capitalize()
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None and lines[first].startswith("# "):
        title = lines[first][2:].strip() or title
        lines = lines[first + 1:]
    chunks: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("## "):
            chunks.append([line[3:].strip()])
        else:
            chunks[-1].append(line)
    bodies = ["\n".join(chunk).strip() for chunk in chunks]
    return [Section(pk=_stable_id(name, i), doc=title[:DOC_MAX], body=body[:BODY_MAX])
            for i, body in enumerate(bodies) if body]


def read_documents(directory: Path) -> tuple[int, list[Section]]:
    """(number of documents, their passages) of every ``*.md`` in ``directory``.

    Raises:
        IngestError: The directory is missing or holds no markdown document.

    Example:
        >>> read_documents(Path("/nonexistent"))
        Traceback (most recent call last):
        ...
        support_agent.ingest.IngestError: --docs /nonexistent: not a directory
    """
    if not directory.is_dir():
        raise IngestError(f"--docs {directory}: not a directory")
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix == ".md")
    if not files:
        raise IngestError(f"--docs {directory}: no .md documents in it")
    sections: list[Section] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise IngestError(f"{path}: cannot read: {exc}") from None
        sections.extend(split_document(path.name, text))
    return len(files), sections


async def _embed_all(settings: Settings, sections: Sequence[Section]) -> list[list[float]]:
    llm = LLM(settings, Metrics())
    try:
        vectors: list[list[float]] = []
        for start in range(0, len(sections), _BATCH):
            batch = sections[start:start + _BATCH]
            vectors.extend(await llm.embed([f"{s.doc}\n{s.body}" for s in batch]))
        return vectors
    finally:
        await llm.close()


def _store(settings: Settings, sections: Sequence[Section], vectors: Sequence[Sequence[float]]) -> int:
    """Upsert into Milvus; returns how many stale passages were deleted."""
    name, dim = settings.vector_store.collection, settings.vector_store.dim
    client: Any = connect(settings.milvus_uri, settings.vector_store.timeout)
    try:
        if client.has_collection(name) and vector_dim(client, name) != dim:
            client.drop_collection(name)
        if not client.has_collection(name):
            create_collection(client, name, dim)
        rows = [{"pk": s.pk, "doc": s.doc, "body": s.body, "embedding": list(v)}
                for s, v in zip(sections, vectors, strict=True)]
        client.upsert(name, rows)
        keep = {s.pk for s in sections}
        present = client.query(name, filter="pk >= 0", output_fields=["pk"])
        stale = [row["pk"] for row in present if row["pk"] not in keep]
        if stale:
            client.delete(name, ids=stale)
        client.load_collection(name)
        return len(stale)
    finally:
        client.close()


def ingest(settings: Settings, directory: Path) -> str:
    """Load ``directory`` into the knowledge base; the one-line summary.

    Raises:
        IngestError: The documents, the API or Milvus failed.
    """
    started = time.monotonic()
    count, sections = read_documents(directory)
    try:
        vectors = asyncio.run(_embed_all(settings, sections))
    except LLMError as exc:
        raise IngestError(str(exc)) from exc
    try:
        removed = _store(settings, sections, vectors)
    except Exception as exc:  # pymilvus raises MilvusException, grpc errors, OSError
        raise IngestError(f"Milvus at {settings.milvus_uri}: {short(exc)}") from exc
    return (f"ingested {len(sections)} passages from {count} documents into "
            f"{settings.vector_store.collection} (dim {settings.vector_store.dim}, {removed} stale removed) "
            f"at {settings.milvus_uri} in {time.monotonic() - started:.1f}s")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m support_agent.ingest",
                                     description="Load markdown documents into the support knowledge base.")
    parser.add_argument("--docs", required=True, type=Path, help="directory of *.md documents")
    args = parser.parse_args(argv)
    try:
        print(ingest(load_settings(), args.docs))
    except (ConfigError, IngestError) as exc:
        print(f"support-agent-ingest: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
