"""The result of measuring a restored stack against its backup, and how values compare.

What is here: :class:`Comparison` (counts of keys and entities lost, changed, extra,
expired; TTL and search mismatches; the first problems in words; ``zero_loss`` and the
facts a scenario step reports) and :func:`values_close` (equality with floats, also
inside lists and dicts, within a tolerance), which the Redis and Milvus checks use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Comparison", "values_close"]


@dataclass
class Comparison:
    """A restored stack measured against the backup it came from."""

    keys_lost: int = 0
    keys_changed: int = 0
    keys_extra: int = 0
    keys_expired: int = 0
    keys_volatile: int = 0
    ttl_mismatches: int = 0
    entities_lost: int = 0
    entities_changed: int = 0
    entities_extra: int = 0
    search_queries: int = 0
    search_mismatches: int = 0
    redis_keys: int = 0
    entities: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def zero_loss(self) -> bool:
        return not (self.keys_lost or self.keys_changed or self.ttl_mismatches
                    or self.entities_lost or self.entities_changed or self.search_mismatches)

    def facts(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "problems"}

    def note(self, problem: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(problem)

    def __str__(self) -> str:
        head = ", ".join(f"{k}={v}" for k, v in self.facts().items())
        return "\n".join([head, *self.problems])


def values_close(a: Any, b: Any, tol: float) -> bool:
    """Equal, with floats (also inside lists and dicts) within ``tol``."""
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
                and not isinstance(a, bool) and not isinstance(b, bool):
            return math.isclose(a, b, rel_tol=tol, abs_tol=tol) or (a != a and b != b)
        return False
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(values_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_close(a[k], b[k], tol) for k in a)
    return bool(a == b)
