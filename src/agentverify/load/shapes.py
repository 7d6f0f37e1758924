"""Load shapes: constant, ramp and step, as Locust ``LoadTestShape`` classes.

The arithmetic is a plain function, :func:`target`, so it can be checked without
Locust; :func:`make_shape` wraps it in a ``LoadTestShape`` and is only ever called in
the load child (importing Locust gevent-patches the importing process).

Example:
    >>> target("step", 0.0, users=8, spawn_rate=4, duration_s=20, steps=4)
    (2, 4)
    >>> target("step", 15.0, users=8, spawn_rate=4, duration_s=20, steps=4)
    (8, 4)
    >>> target("ramp", 5.0, users=10, spawn_rate=4, duration_s=10, steps=1)
    (6, 10.0)
    >>> target("constant", 10.0, users=8, spawn_rate=4, duration_s=10, steps=1) is None
    True
"""

from __future__ import annotations

import math
import time
from typing import Any

from agentverify.load.plan import LoadPlan

__all__ = ["make_shape", "target"]


def target(shape: str, t: float, *, users: int, spawn_rate: float, duration_s: float,
           steps: int) -> tuple[int, float] | None:
    """``(user_count, spawn_rate)`` the load should have at ``t`` seconds, or ``None``
    once ``duration_s`` is over.

    * ``constant``: ``users`` throughout, started at ``spawn_rate``.
    * ``ramp``: from 1 user up to ``users`` linearly over the duration (one step up
      per second, so the spawn rate is whatever keeps up with the line).
    * ``step``: ``steps`` equal stages of ``users * k / steps`` users, each started at
      ``spawn_rate``.
    """
    if t >= duration_s:
        return None
    if shape == "constant":
        return users, spawn_rate
    if shape == "ramp":
        count = max(1, min(users, math.ceil(users * (t + 1) / duration_s)))
        # each second adds users/duration users; spawn them at once to stay on the line
        return count, float(max(spawn_rate, users))
    if shape == "step":
        steps = max(1, min(steps, users))
        stage = min(steps - 1, int(t // (duration_s / steps)))
        return max(1, round(users * (stage + 1) / steps)), spawn_rate
    raise ValueError(f"unknown shape {shape!r}; expected constant, ramp or step")


def make_shape(plan: LoadPlan) -> Any:
    """A Locust ``LoadTestShape`` instance following :func:`target` for ``plan``."""
    from locust import LoadTestShape  # the child only: see the module docstring

    class AgentVerifyShape(LoadTestShape):
        """The plan's shape; ends the run after ``duration_s``.

        ``ended_at`` (``time.monotonic()``) is when the first tick past the duration
        came, so the run's duration does not include the time the stop takes.
        """

        ended_at: float | None = None

        def tick(self) -> tuple[int, float] | None:
            now = target(plan.shape, self.get_run_time(), users=plan.users,
                         spawn_rate=plan.spawn_rate, duration_s=plan.duration_s,
                         steps=plan.steps)
            if now is None and self.ended_at is None:
                self.ended_at = time.monotonic()
            return now

    AgentVerifyShape.__name__ = f"{plan.shape.capitalize()}Shape"
    return AgentVerifyShape()
