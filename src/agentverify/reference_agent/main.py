"""ASGI entry point: ``uvicorn agentverify.reference_agent.main:app``.

``app`` is built on first access (PEP 562 module ``__getattr__``), so importing this
module never reads the environment; a bad configuration is reported as one line on
stderr and exit code 1 instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app"]  # noqa: F822 - provided lazily by __getattr__

_app: Any = None


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _app is None:
        from agentverify.reference_agent.app import create_app
        from agentverify.reference_agent.settings import AgentConfigError

        try:
            _app = create_app()
        except AgentConfigError as exc:
            print(f"reference agent: configuration error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
    return _app
