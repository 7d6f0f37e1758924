"""The session's teardown runs the reports beside the stack's teardown (Session.close's
``meanwhile``): both run at once, both end before it returns, neither error is lost."""

from __future__ import annotations

import threading

import pytest

from agentverify.session import _beside


def test_both_run_at_once_and_have_ended_on_return() -> None:
    down_started, reports_done = threading.Event(), threading.Event()
    ended: list[str] = []

    def down() -> None:
        down_started.set()
        # the reports are written while this waits: run one after the other, this times out
        assert reports_done.wait(5)
        ended.append("down")

    def reports() -> None:
        assert down_started.wait(5)
        reports_done.set()
        ended.append("reports")

    _beside(down, reports)
    assert ended == ["reports", "down"]


def test_a_failing_teardown_is_raised_after_the_reports_were_written() -> None:
    written: list[bool] = []

    def down() -> None:
        raise RuntimeError("a container would not stop")

    with pytest.raises(RuntimeError, match="would not stop"):
        _beside(down, lambda: written.append(True))
    assert written == [True]


def test_an_interrupted_report_still_waits_for_the_teardown() -> None:
    ended: list[str] = []
    started = threading.Event()

    def down() -> None:
        started.set()
        threading.Event().wait(0.2)
        ended.append("down")

    def reports() -> None:
        started.wait(5)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _beside(down, reports)
    assert ended == ["down"]  # nothing of the stack is left running on return
