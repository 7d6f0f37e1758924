"""SIGTERM as a Ctrl-C (agentverify._signals): a cancelled CI job tears its stack down."""

from __future__ import annotations

import os
import signal
import time

import pytest

from agentverify._signals import term_as_interrupt


@pytest.fixture
def default_sigterm():
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


def _deliver() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)  # the handler runs in the main thread at the next bytecode


def test_the_first_sigterm_interrupts_and_a_second_cannot_cut_the_teardown(
        default_sigterm) -> None:
    restore = term_as_interrupt()
    with pytest.raises(KeyboardInterrupt):
        _deliver()
    _deliver()  # heeded once: the teardown the first one started goes on
    # a handler, not SIG_IGN, which a process started during the teardown would inherit
    assert callable(signal.getsignal(signal.SIGTERM))
    restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_handler_of_the_host_is_left_alone(default_sigterm) -> None:
    seen: list[int] = []
    mine = lambda signum, frame: seen.append(signum)  # noqa: E731
    signal.signal(signal.SIGTERM, mine)
    restore = term_as_interrupt()
    _deliver()
    assert seen == [signal.SIGTERM]
    restore()
    assert signal.getsignal(signal.SIGTERM) is mine


def test_a_shielded_teardown_is_cut_by_neither_a_ctrl_c_nor_a_sigterm(default_sigterm) -> None:
    from agentverify._signals import shielded

    restore = term_as_interrupt()
    armed = signal.getsignal(signal.SIGTERM)
    with shielded():
        os.kill(os.getpid(), signal.SIGINT)  # GitHub Actions' cancel: SIGINT, then SIGTERM
        _deliver()
        done = True
    assert done
    # afterwards each is as it was: Ctrl-C interrupts, SIGTERM is still armed
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is armed
    with pytest.raises(KeyboardInterrupt):
        _deliver()
    restore()


def test_a_shield_leaves_a_handler_of_the_host_in_place(default_sigterm) -> None:
    from agentverify._signals import shielded

    seen: list[int] = []
    mine = lambda signum, frame: seen.append(signum)  # noqa: E731
    signal.signal(signal.SIGTERM, mine)
    with shielded():
        _deliver()
    assert seen == [signal.SIGTERM]
