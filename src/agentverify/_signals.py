"""SIGTERM handled as a Ctrl-C, so a cancelled CI job still tears its stack down.

CI systems cancel a job with SIGTERM (GitLab, Jenkins, a Kubernetes runner's pod; GitHub
Actions after a SIGINT), then SIGKILL after a grace period. Python's default for SIGTERM
ends the process on the spot: no ``finally``, no teardown, every service and container
left for the next run to reap. With :func:`term_as_interrupt` the first SIGTERM raises
:class:`KeyboardInterrupt` where the main thread is, which the plugin and the CLI already
handle as Ctrl-C (the stack goes down, the run ends "interrupted"); a later SIGTERM is
ignored, so it cannot cut that teardown short.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["term_as_interrupt"]


def term_as_interrupt() -> Callable[[], None]:
    """Make the first SIGTERM raise KeyboardInterrupt in the main thread; returns what
    puts the previous handler back.

    A no-op (restoring nothing) outside the main thread, or when SIGTERM is not at its
    default: a handler of the host's own, or an ignored SIGTERM, is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        return lambda: None

    def heeded(signum: int, frame: Any) -> None:
        """A later SIGTERM: the teardown the first one started must not be cut. (A
        handler, not SIG_IGN: a process started meanwhile must not inherit an ignored
        SIGTERM.)"""

    def on_term(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, heeded)
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, on_term)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) in (on_term, heeded):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return restore
