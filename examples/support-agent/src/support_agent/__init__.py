"""Orbit support agent: a retrieval-augmented customer-support API.

It answers questions about Orbit mesh Wi-Fi from a knowledge base in Milvus, through any
OpenAI-compatible API, caches answers in Redis and exposes Prometheus metrics. Run it
with ``python -m support_agent``; load the knowledge base with
``python -m support_agent.ingest --docs knowledge``.

Example:
    >>> import support_agent
    >>> support_agent.__version__
    '0.1.0'
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
