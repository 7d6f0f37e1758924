"""What agentverify's images are called and how they are labelled.

What is here: the repositories of the two built images (``agentverify/base``,
``agentverify/runtime``), the prefix of the names agentverify owns, the labels every
built image carries (what it is, its content hash, its Python, the sources it holds)
and :func:`short_hash`, the length of every content-hash tag.
"""

from __future__ import annotations

__all__ = ["BASE_REPO", "HASH_LABEL", "LABEL", "OWN_PREFIX", "PYTHON_LABEL", "RUNTIME_REPO",
           "SOURCE_LABEL", "short_hash"]

BASE_REPO = "agentverify/base"
RUNTIME_REPO = "agentverify/runtime"
OWN_PREFIX = "agentverify/"
LABEL = "agentverify.image"
HASH_LABEL = "agentverify.content-hash"
PYTHON_LABEL = "agentverify.python"
#: label of the runtime image: hash of the agentverify sources it was built from
SOURCE_LABEL = "agentverify.source-hash"
_HASH_LEN = 12


def short_hash(digest: str) -> str:
    return digest[:_HASH_LEN]
