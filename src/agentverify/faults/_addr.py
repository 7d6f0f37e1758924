"""TCP addresses the way Go's ``net`` package parses, resolves, binds and prints them.

A proxy's ``listen`` is shown as Go's listener prints it once bound (``localhost:0`` ->
``127.0.0.1:41234``; a wildcard ``0.0.0.0:N``, ``:N`` or ``[::]:N`` binds one dual-stack
socket and prints ``[::]:N``), and "is this the same proxy?" compares the shown address
with the *resolved* form of the new one (``localhost:7070`` equals ``127.0.0.1:7070``,
``127.0.0.1:0`` never equals a bound port). Error texts are Go's
(``listen tcp 127.0.0.1:3310: bind: address already in use``), because clients match them.

Example:
    >>> split_host_port("localhost:7070")
    ('localhost', '7070')
    >>> format_addr("::1", 80)
    '[::1]:80'
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from dataclasses import dataclass

__all__ = ["AddrError", "ResolvedAddr", "split_host_port", "format_addr", "resolve", "bind_listener"]


class AddrError(OSError):
    """An address Go would refuse; ``str()`` is Go's message without the operation prefix."""


@dataclass(frozen=True)
class ResolvedAddr:
    """A resolved ``host:port``: ``ip`` is ``None`` for an empty host (every interface)."""

    ip: str | None
    port: int

    def __str__(self) -> str:
        return format_addr(self.ip, self.port)

    @property
    def wildcard(self) -> bool:
        return self.ip is None or ipaddress.ip_address(self.ip.split("%")[0]).is_unspecified


def format_addr(ip: str | None, port: int) -> str:
    """``host:port`` as Go's ``TCPAddr.String()``: IPv6 in brackets, empty host as ``:port``."""
    if not ip:
        return f":{port}"
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[len("::ffff:"):]
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def split_host_port(hostport: str) -> tuple[str, str]:
    """Go's ``net.SplitHostPort``.

    Raises:
        AddrError: ``address X: missing port in address`` and Go's other messages.
    """
    def fail(why: str) -> AddrError:
        return AddrError(f"address {hostport}: {why}")

    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise fail("missing ']' in address")
        rest = hostport[end + 1:]
        if not rest:
            raise fail("missing port in address")
        if not rest.startswith(":"):
            raise fail("too many colons in address" if ":" in rest else "missing port in address")
        host, port = hostport[1:end], rest[1:]
        if "[" in port or "]" in port:
            raise fail("unexpected ']' in address")
        return host, port
    colon = hostport.rfind(":")
    if colon < 0:
        raise fail("missing port in address")
    host, port = hostport[:colon], hostport[colon + 1:]
    if ":" in host:
        raise fail("too many colons in address")
    if "[" in host or "]" in host or "[" in port or "]" in port:
        raise fail("unexpected '[' in address")
    return host, port


def _port_number(port: str) -> int:
    if port == "":
        return 0
    if port.isdigit():
        number = int(port)
        if number > 65535:
            raise AddrError(f"address {port}: invalid port")
        return number
    try:
        return socket.getservbyname(port, "tcp")
    except OSError:
        raise AddrError(f"lookup tcp/{port}: unknown port") from None


async def resolve(hostport: str) -> ResolvedAddr:
    """Go's ``net.ResolveTCPAddr("tcp", hostport)``: a hostname gives its first IPv4 address.

    Raises:
        AddrError: a malformed address, an unknown port or a host that does not resolve.
    """
    if hostport == "":
        return ResolvedAddr(None, 0)
    host, port_text = split_host_port(hostport)
    port = _port_number(port_text)
    if host == "":
        return ResolvedAddr(None, port)
    try:
        return ResolvedAddr(str(ipaddress.ip_address(host.split("%")[0])) + host[len(host.split("%")[0]):], port)
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise AddrError(f"lookup {host}: no such host") from None
    ips = [info[4][0] for info in infos]
    # Go prefers IPv4 for "tcp" unless the address was written with brackets.
    chosen = next((ip for ip in ips if ":" not in ip), ips[0]) if "[" not in hostport else \
        next((ip for ip in ips if ":" in ip), ips[0])
    return ResolvedAddr(chosen, port)


def _somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return socket.SOMAXCONN


def bind_listener(addr: ResolvedAddr) -> tuple[socket.socket, str]:
    """Bind and listen as Go's ``net.Listen("tcp", addr)`` does; return the socket and its shown address.

    A wildcard address binds one IPv6 socket that also accepts IPv4 (Go does the same),
    unless this host has no IPv6.

    Raises:
        AddrError: ``bind: address already in use`` and the like (without ``listen tcp X:``).
    """
    family, host = socket.AF_INET, addr.ip or "0.0.0.0"
    dual = addr.wildcard and socket.has_ipv6
    if dual:
        family, host = socket.AF_INET6, "::"
    elif addr.ip and ":" in addr.ip:
        family = socket.AF_INET6
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if not dual or exc.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            raise AddrError(f"socket: {os.strerror(exc.errno or 0).lower()}") from None
        family, host, dual = socket.AF_INET, "0.0.0.0", False
        sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            sock.bind((host, addr.port) if family == socket.AF_INET else (host, addr.port, 0, 0))
        except OSError as exc:
            raise AddrError(f"bind: {os.strerror(exc.errno or 0).lower()}") from None
        sock.listen(_somaxconn())
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()
    return sock, format_addr(bound[0], bound[1])
