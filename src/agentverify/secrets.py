"""Secrets: where API keys come from, and how they are kept out of every output.

Keys are never in a config file: ``model.api_key_env`` names the environment variable
that holds the key. When the stack's own LLM stub is in use and the variable is unset,
a random key is made for the run, so authentication is exercised end to end.

Every message agentverify prints or writes (errors with log tails, reports) goes
through a :class:`Redactor` that knows the run's secret values.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from agentverify.errors import ConfigError

__all__ = ["Redactor", "resolve_api_keys", "MASK"]

MASK = "***"


class Redactor:
    """Replace known secret values with ``***``.

    Example:
        >>> Redactor(["sk-123456"])("key=sk-123456")
        'key=***'
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        # short values would mask ordinary words; real keys are long
        self._values = sorted({v for v in values if v and len(v) >= 8}, key=len, reverse=True)

    def add(self, value: str) -> None:
        if value and len(value) >= 8 and value not in self._values:
            self._values.append(value)
            self._values.sort(key=len, reverse=True)

    def extend(self, other: Redactor) -> None:
        """Know every secret ``other`` knows too."""
        for value in other._values:
            self.add(value)

    def __call__(self, text: str) -> str:
        for v in self._values:
            if v in text:
                text = text.replace(v, MASK)
        return text

    def scrub(self, data: Any) -> Any:
        """Redact every string inside a JSON-like structure."""
        if isinstance(data, str):
            return self(data)
        if isinstance(data, dict):
            return {k: self.scrub(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.scrub(v) for v in data]
        return data

    def __repr__(self) -> str:
        return f"Redactor({len(self._values)} secret(s))"


def resolve_api_keys(config: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Env var name -> key for the primary and backup LLM APIs.

    Raises:
        ConfigError: a real provider is configured (``base_url`` set) but its key
            variable is not set.
    """
    environ = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for section, model in (("model", config.model), ("model.backup", config.model.backup)):
        name = model.api_key_env
        value = environ.get(name, "")
        if not value:
            if model.base_url:
                raise ConfigError(
                    f"environment variable {name} is not set, but {section}.base_url points "
                    f"at a real provider; export {name}", source=config.source,
                    key=f"{section}.api_key_env")
            value = "sk-agentverify-" + secrets.token_urlsafe(24)
        out[name] = value
    return out
