"""SIGTERM handled as a Ctrl-C, so a cancelled CI job still tears its stack down.

CI systems cancel a job with SIGTERM (GitLab, Jenkins, a Kubernetes runner's pod; GitHub
Actions after a SIGINT), then SIGKILL after a grace period. Python's default for SIGTERM
ends the process on the spot: no ``finally``, no teardown, every service and container
left for the next run to reap. With :func:`term_as_interrupt` the first SIGTERM raises
:class:`KeyboardInterrupt` where the main thread is, which the plugin and the CLI already
handle as Ctrl-C (the stack goes down, the run ends "interrupted"); a later SIGTERM is
swallowed. :func:`shielded` keeps Ctrl-C and SIGTERM from cutting a teardown short (a
SIGINT, then a SIGTERM seconds later, is how GitHub Actions cancels).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["shielded", "term_as_interrupt"]


def _heeded(signum: int, frame: Any) -> None:
    """A signal that must not cut what runs now. (A handler, not SIG_IGN: a process
    started meanwhile must not inherit an ignored signal; exec resets a handler.)"""


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def term_as_interrupt() -> Callable[[], None]:
    """Make the first SIGTERM raise KeyboardInterrupt in the main thread; returns what
    puts the default back.

    A no-op (restoring nothing) outside the main thread, or when SIGTERM is not at its
    default: a handler of the host's own, or an ignored SIGTERM, is left alone.
    """
    if not _main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None
    signal.signal(signal.SIGTERM, _on_term)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) in (_on_term, _heeded):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return restore


def _on_term(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, _heeded)  # the teardown it starts must not be cut
    raise KeyboardInterrupt("SIGTERM")


def _ours_or_default(sig: int, handler: Any) -> bool:
    if sig == signal.SIGINT:
        return handler in (signal.default_int_handler, signal.SIG_DFL, _heeded)
    return handler in (signal.SIG_DFL, _heeded, _on_term)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Ctrl-C and SIGTERM are swallowed while the body runs (a teardown), then their
    handlers are back. A handler of the host's own is left in place; outside the main
    thread nothing changes."""
    previous: dict[int, Any] = {}
    if _main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            if _ours_or_default(sig, handler):
                previous[sig] = handler
                signal.signal(sig, _heeded)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
