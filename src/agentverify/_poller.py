"""A thread that does one thing every few seconds until it is stopped.

Monitors of a rehearsal (the steady-state hypothesis, a drill's alert watch, the
known-answer prober) each look at the system on a fixed cadence while the scenario goes
on; :class:`Poller` is that loop, once.

Example:
    >>> class Count(Poller):
    ...     interval = 0.01
    ...     def __init__(self):
    ...         super().__init__(); self.n = 0
    ...     def tick(self):
    ...         self.n += 1
    >>> c = Count().start(); import time; time.sleep(0.05); c.stop(); c.n > 0
    True
"""

from __future__ import annotations

import threading

__all__ = ["Poller"]


class Poller:
    """Calls :meth:`tick` every :attr:`interval` seconds in a daemon thread until
    :meth:`stop` (``wait_first``: the first call after one interval, not at once)."""

    interval: float = 0.5
    name: str = "poller"
    wait_first: bool = False

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> Poller:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        if self.wait_first and self._stop.wait(self.interval):
            return
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.interval)
