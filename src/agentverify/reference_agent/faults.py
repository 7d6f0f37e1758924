"""Fault knobs that rehearsals turn on in one replica (``AGENT_ERROR_RATE`` & co).

The injected error rate is deterministic so a gate can predict exactly how many
requests fail: the k-th request (k = 1, 2, ...) fails iff
``floor(k * rate) > floor((k - 1) * rate)``. Over any N consecutive requests that is
``floor(N * rate)`` failures from the start, never a random number.

Example:
    >>> [should_fail(k, 0.25) for k in range(1, 9)]
    [False, False, False, True, False, False, False, True]
"""

from __future__ import annotations

import math
import threading
from fractions import Fraction

__all__ = ["ErrorInjector", "should_fail"]


def _exact(rate: float | Fraction) -> Fraction:
    # repr() gives the shortest decimal that round-trips, so 0.29 becomes exactly 29/100;
    # with binary floats 100 * 0.29 == 28.999999999999996 and the failure would slip.
    return rate if isinstance(rate, Fraction) else Fraction(repr(float(rate)))


def should_fail(k: int, rate: float | Fraction) -> bool:
    """Whether the k-th request (1-based) is one of the injected failures.

    Args:
        k: The request's 1-based sequence number.
        rate: The share of requests to fail, 0..1.

    Returns:
        ``floor(k * rate) > floor((k - 1) * rate)``, computed exactly.
    """
    if k < 1:
        raise ValueError(f"k is 1-based, got {k}")
    exact = _exact(rate)
    return math.floor(k * exact) > math.floor((k - 1) * exact)


class ErrorInjector:
    """Counts requests and says which ones to fail at the configured rate.

    Example:
        >>> inj = ErrorInjector(0.5)
        >>> [inj.next() for _ in range(4)]
        [False, True, False, True]
    """

    def __init__(self, rate: float) -> None:
        """Create the injector.

        Args:
            rate: Share of requests to fail, 0..1 (0 disables injection).
        """
        self._rate = _exact(rate)
        self._count = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether any request can fail."""
        return self._rate > 0

    def next(self) -> bool:
        """Count one request and return whether it must fail."""
        if not self.enabled:
            return False
        with self._lock:
            self._count += 1
            k = self._count
        return should_fail(k, self._rate)
