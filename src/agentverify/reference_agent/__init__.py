"""The reference AI-agent service that agentverify's bundled gate verifies.

A FastAPI app answering questions from a knowledge base: Redis answer cache, Milvus
retrieval, an OpenAI-compatible LLM, Prometheus metrics, and the admin switches the
emergency runbooks use. One uvicorn process is one replica::

    AGENT_CONFIG=config.yaml AGENT_REPLICA=0 \\
        python -m uvicorn agentverify.reference_agent.main:app --host 127.0.0.1 --port 8000
    python -m agentverify.reference_agent.ingest --config config.yaml --knowledge fixtures/knowledge

Environment variables (they override the file; read once when the app is created):

=========================  ===================================================================
``AGENT_CONFIG``           path of the YAML config (reference ``config.yaml`` format); unset
                           means built-in defaults. Unknown keys are ignored.
``REDIS_URL``              overrides ``cache.url``
``MILVUS_HOST``            overrides ``vector_store.host``
``MILVUS_PORT``            overrides ``vector_store.port``
``OPENAI_BASE_URL``        overrides ``model.base_url`` (e.g. ``http://127.0.0.1:8080/v1``)
``OPENAI_BACKUP_BASE_URL`` overrides ``model.backup.base_url`` (unset in both: the primary's)
``OPENAI_API_KEY``         primary API key; the variable's name is ``model.api_key_env``
``OPENAI_BACKUP_API_KEY``  backup API key; the name is ``model.backup.api_key_env``
``AGENT_VERSION``          version reported in responses, headers and ``agent_info`` (``v1``)
``AGENT_REPLICA``          replica id reported likewise (``0``)
``AGENT_FAIL_HEALTH``      ``1``: ``/health`` always answers 503 ``AGENT_FAIL_HEALTH``
``AGENT_ERROR_RATE``       0..1: share of ``/chat`` answered 500 ``injected``; the k-th request
                           fails iff floor(k*rate) > floor((k-1)*rate)
``AGENT_LATENCY_MS``       milliseconds added to every ``/chat``
=========================  ===================================================================

API keys are held as :class:`pydantic.SecretStr`: never logged, never in a response,
a repr or an error message. Keys written in the YAML file are ignored.

Modules: ``settings`` (config), ``app`` (:func:`create_app`, routes), ``service`` (the
chat flow), ``llm``, ``vectors``, ``cache``, ``ratelimit``, ``shared`` (fleet-wide
settings in Redis), ``metrics``, ``faults``, ``ingest``, ``main`` (ASGI entry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentverify.reference_agent.settings import AgentConfigError, AgentSettings, load_settings

if TYPE_CHECKING:
    from agentverify.reference_agent.app import create_app

__all__ = ["AgentConfigError", "AgentSettings", "create_app", "load_settings"]


def __getattr__(name: str) -> Any:
    # FastAPI is imported only by those who build the app (not by the ingest command).
    if name == "create_app":
        from agentverify.reference_agent.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
