"""Deterministic token counting, hashing and embeddings for the LLM stub.

Nothing here depends on a real tokenizer: counts are exact and reproducible on every
machine, so a test can predict the ``usage`` block of a response before sending it.

Token counting:
    ``count_tokens(text)`` is the number of matches of the regular expression
    ``\\w+|[^\\w\\s]`` — every run of word characters is one token and every other
    non-space character is a token of its own::

        "How do I reset my password?"  ->  How | do | I | reset | my | password | ?  = 7

Prompt tokens of a chat request (imitates OpenAI's per-message overhead)::

    prompt_tokens = sum(count_tokens(m.content) + 4 for m in messages) + 2

Stable hash:
    ``stable_hash(text)`` is the first 8 bytes of ``sha256(text.encode("utf-8"))`` read
    as a big-endian unsigned integer. Python's ``hash()`` is salted per process and is
    never used.

Embeddings:
    ``embed(text, dim)`` is a feature-hashing vector: lowercase word unigrams (weight
    1.0; 0.2 for a short list of stop words), word bigrams (0.5; 0.2 when both are stop
    words) and character trigrams of each non-stop word (0.2 each) are hashed with
    BLAKE2b into ``dim`` buckets, each with a ±1 sign taken from another bit of the same
    hash, and the vector is L2-normalised.
    Texts sharing words land near each other; unrelated texts are near orthogonal.

Example:
    >>> count_tokens("How do I reset my password?")
    7
    >>> prompt_tokens([{"role": "user", "content": "hi"}])
    7
    >>> v = embed("password reset steps", 8)
    >>> len(v), round(sum(x * x for x in v), 6)
    (8, 1.0)
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache

__all__ = [
    "TOKEN_PATTERN",
    "count_tokens",
    "cut_tokens",
    "prompt_tokens",
    "stable_hash",
    "embed",
    "cosine",
    "MESSAGE_OVERHEAD",
    "REPLY_PRIMING",
]

#: Every word run is one token, every other non-space character is one token.
TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
#: Tokens added per chat message (role and separators in OpenAI's accounting).
MESSAGE_OVERHEAD = 4
#: Tokens added once per chat request (the priming of the assistant's reply).
REPLY_PRIMING = 2

_COUNT_PATTERN = re.compile(r"\b\w|[^\w\s]")
_WORDS = re.compile(r"\w+")
_UNIGRAM_WEIGHT = 1.0
_BIGRAM_WEIGHT = 0.5
_TRIGRAM_WEIGHT = 0.2
_STOPWORD_WEIGHT = 0.2
# Function words carry little meaning; at full weight "how do I reset my password" sits
# closer to "how do I change my email" than to "password reset steps".
_STOPWORDS = frozenset(
    "a an and are as at be by can do does for from had has have how i if in is it its me"
    " my of on or our so than that the their then there these this to was we were what"
    " when where which who why will with you your".split()
)


@lru_cache(maxsize=4096)
def count_tokens(text: str) -> int:
    """Return the number of tokens in ``text`` (matches of ``\\w+|[^\\w\\s]``).

    Results are cached: agents resend the same system prompt and retrieved documents
    in request after request.

    Example:
        >>> count_tokens("According to: the docs.")
        6
    """
    # Same count as TOKEN_PATTERN (each \w+ run has exactly one \b\w start), about 40%
    # faster because the engine matches one character per word instead of the run.
    return len(_COUNT_PATTERN.findall(text))


def cut_tokens(text: str, n: int) -> str:
    """Return the longest prefix of ``text`` that holds exactly ``min(n, count)`` tokens.

    The prefix ends at the end of the n-th token, so re-counting it gives exactly ``n``
    (a prefix cut at a match boundary tokenizes the same as the whole text did).

    Example:
        >>> cut_tokens("Reset it, then log in.", 3)
        'Reset it,'
    """
    if n <= 0:
        return ""
    end = -1
    for i, match in enumerate(TOKEN_PATTERN.finditer(text), start=1):
        end = match.end()
        if i == n:
            break
    return text if end < 0 else text[:end]


def prompt_tokens(messages: Iterable[Mapping[str, object]]) -> int:
    """Return the prompt tokens of chat ``messages`` (see the module docstring formula).

    Each message is a mapping with a ``content`` string (missing or ``None`` counts as
    empty).

    Example:
        >>> prompt_tokens([{"role": "system", "content": "Be brief."},
        ...                {"role": "user", "content": "Hi!"}])
        15
    """
    total = REPLY_PRIMING
    for message in messages:
        content = message.get("content") or ""
        total += count_tokens(str(content)) + MESSAGE_OVERHEAD
    return total


def stable_hash(text: str) -> int:
    """Return a process-independent 64-bit hash of ``text`` (first 8 bytes of SHA-256).

    Example:
        >>> stable_hash("abc") == stable_hash("abc")
        True
    """
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _feature_hash(feature: str) -> int:
    return int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "big")


def _signed(feature: str, weight: float, dim: int) -> tuple[int, float]:
    h = _feature_hash(feature)
    # Bucket from the low bits, sign from the top bit: independent parts of the hash.
    return h % dim, (weight if h >> 63 else -weight)


@lru_cache(maxsize=65536)
def _word_terms(word: str, dim: int) -> tuple[tuple[int, float], ...]:
    """(bucket, signed weight) of a word's unigram and character trigrams, merged."""
    # Words repeat across texts, so one cached entry replaces 1 + len(word) hashes.
    if word in _STOPWORDS:
        return (_signed("w:" + word, _STOPWORD_WEIGHT, dim),)
    merged: dict[int, float] = {}
    padded = "#" + word + "#"
    terms = [_signed("w:" + word, _UNIGRAM_WEIGHT, dim)]
    terms.extend(_signed("c:" + padded[i : i + 3], _TRIGRAM_WEIGHT, dim) for i in range(len(padded) - 2))
    for bucket, value in terms:
        merged[bucket] = merged.get(bucket, 0.0) + value
    return tuple(merged.items())


@lru_cache(maxsize=65536)
def _bigram_term(first: str, second: str, dim: int) -> tuple[int, float]:
    stop = first in _STOPWORDS and second in _STOPWORDS
    return _signed("b:" + first + " " + second, _STOPWORD_WEIGHT if stop else _BIGRAM_WEIGHT, dim)


@lru_cache(maxsize=8192)
def _embed_cached(text: str, dim: int) -> tuple[float, ...]:
    vec = [0.0] * dim
    words = _WORDS.findall(text.lower())
    for word in words:
        for bucket, value in _word_terms(word, dim):
            vec[bucket] += value
    for first, second in zip(words, words[1:], strict=False):
        bucket, value = _bigram_term(first, second, dim)
        vec[bucket] += value
    if not words:
        # An empty (or all-punctuation) text still gets a unit vector, so cosine
        # similarity against it is defined for vector stores.
        bucket, value = _signed("e:", 1.0, dim)
        vec[bucket] = value
    norm = math.sqrt(sum(x * x for x in vec))
    if norm == 0.0:
        # All features cancelled out (possible for tiny dims): fall back to a fixed axis.
        vec[_signed("e:", 1.0, dim)[0]] = 1.0
        return tuple(vec)
    return tuple(x / norm for x in vec)


def embed(text: str, dim: int = 64) -> list[float]:
    """Return the deterministic, L2-normalised feature-hashing embedding of ``text``.

    Args:
        text: Any string; case is ignored.
        dim: Number of dimensions (at least 1).

    Example:
        >>> a = embed("how do I reset my password")
        >>> b = embed("password reset steps")
        >>> c = embed("the cafeteria serves lunch at noon")
        >>> cosine(a, b) > cosine(a, c)
        True
    """
    if dim < 1:
        raise ValueError(f"dim must be at least 1, got {dim}")
    return list(_embed_cached(text, dim))


def cosine(a: Iterable[float], b: Iterable[float]) -> float:
    """Return the cosine similarity of two vectors (0.0 if either is all zeros).

    Example:
        >>> cosine([1.0, 0.0], [1.0, 1.0])  # doctest: +ELLIPSIS
        0.7071...
    """
    a, b = list(a), list(b)
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot / (na * nb)
