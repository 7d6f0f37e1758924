"""Ports handed out on 127.0.0.1: outside the kernel's ephemeral range, never twice."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from agentverify.stack import host
from agentverify.stack.host import LOWEST_PORT, free_port


def test_ports_come_from_below_the_ephemeral_range_and_are_never_handed_twice() -> None:
    low = host._ephemeral_low()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    # an outgoing connection takes its local port from [low, high]: never one of these
    assert all(LOWEST_PORT <= p < low for p in ports), (low, ports)
    for p in ports[:5]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # free indeed


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        free = free_port()
        draws: Iterator[int] = iter([taken, taken, free])
        host._handed.remove(free)  # as if not handed yet
        monkeypatch.setattr(host.random, "randrange", lambda a, b: next(draws))
        assert free_port() == free


def test_without_room_below_the_range_the_kernel_chooses(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "_ephemeral_low", lambda: LOWEST_PORT + 10)
    monkeypatch.setattr(host.random, "randrange", lambda a, b: pytest.fail("drew a port"))
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
