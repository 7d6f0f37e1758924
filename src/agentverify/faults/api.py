"""Toxiproxy's HTTP API as an ASGI application over a collection of proxies.

Routes, status codes, error texts and response shapes are those of Toxiproxy 2.12.0
(``api.go``): ``/proxies``, ``/populate``, ``/proxies/{p}``, ``/proxies/{p}/toxics[/{t}]``,
``/reset``, ``/version`` and, when enabled, ``/metrics``. Errors are
``{"error": message, "status": code}`` sent as Go's ``http.Error`` sends them
(``text/plain`` with a trailing newline); a ``Mozilla/`` user agent gets 403; every
response carries ``X-Toxiproxy-Request-Id``. One lock serialises the handlers, as
Toxiproxy's collection lock does, so concurrent calls never interleave half-way.

Example:
    >>> app = ToxiproxyAPI(ProxyCollection())
    >>> sorted(ROUTES)[:2]
    [('/populate', 'POST'), ('/proxies', 'GET')]
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agentverify.faults._gojson import GoJSONError, decode_struct, dumps, loads
from agentverify.faults.proxy import Proxy, ProxyAlreadyStarted
from agentverify.faults.toxics import (
    ERR_TOXIC_NOT_FOUND,
    ApiError,
    bad_body,
    parse_toxic,
    update_toxic,
)

__all__ = ["VERSION", "ProxyCollection", "ToxiproxyAPI", "ROUTES"]

#: The Toxiproxy release whose behaviour this server reproduces (``GET /version``).
VERSION = "2.12.0"

ERR_PROXY_NOT_FOUND = ("proxy not found", 404)
ERR_PROXY_EXISTS = ("proxy already exists", 409)

_PROXY_FIELDS = {"name": "string", "listen": "string", "upstream": "string", "enabled": "bool"}


def _missing(field: str) -> ApiError:
    return ApiError(f"missing required field: {field}", 400)


class ProxyCollection:
    """Every proxy of one server, by name (Toxiproxy's ``ProxyCollection``).

    Example:
        >>> import asyncio
        >>> async def demo():
        ...     c = ProxyCollection()
        ...     p = await c.create(b'{"name": "redis", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:6379"}')
        ...     c.clear()
        ...     return p.name
        >>> asyncio.run(demo())
        'redis'
    """

    def __init__(self, *, count_bytes: bool = False) -> None:
        self.proxies: dict[str, Proxy] = {}
        self.lock = asyncio.Lock()
        self.count_bytes = count_bytes  # proxies count their bytes (for /metrics)

    def get(self, name: str) -> Proxy:
        try:
            return self.proxies[name]
        except KeyError:
            raise ApiError(*ERR_PROXY_NOT_FOUND) from None

    async def create(self, body: bytes) -> Proxy:
        """``POST /proxies``: 400 missing name/upstream, 409 exists, 500 listen failure."""
        try:
            given = decode_struct(loads(body), _PROXY_FIELDS, "Proxy")
        except GoJSONError as exc:
            raise bad_body(exc) from None
        name, upstream = given.get("name", ""), given.get("upstream", "")
        if not name:
            raise _missing("name")
        if not upstream:
            raise _missing("upstream")
        if name in self.proxies:
            raise ApiError(*ERR_PROXY_EXISTS)
        proxy = Proxy(name, given.get("listen", ""), upstream, count_bytes=self.count_bytes)
        if given.get("enabled", True):
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    @staticmethod
    def parse_populate(body: bytes) -> list[dict[str, Any]]:
        """Validate a whole ``/populate`` body before anything is created.

        Raises:
            ApiError: 400 bad body, or ``missing required field: name at proxy N`` (1-based).
        """
        try:
            items = loads(body)
            if not isinstance(items, list):
                raise GoJSONError(f"json: cannot unmarshal {'object' if isinstance(items, dict) else 'value'}"
                                  " into Go value of type []toxiproxy.Proxy")
            entries = [decode_struct(item, _PROXY_FIELDS, "Proxy") for item in items]
        except GoJSONError as exc:
            raise bad_body(exc) from None
        for i, entry in enumerate(entries, start=1):
            if not entry.get("name"):
                raise _missing(f"name at proxy {i}")
            if not entry.get("upstream"):
                raise _missing(f"upstream at proxy {i}")
        return entries

    async def populate(self, body: bytes) -> tuple[list[Proxy], ApiError | None]:
        """``POST /populate``: add or replace by name, in order; stop at the first failure.

        A proxy whose shown listen equals the resolved new listen and whose upstream is the
        same is kept unchanged (toxics, enabled flag, connections); any other named proxy is
        stopped and replaced. Proxies not named are left alone.
        """
        entries = self.parse_populate(body)
        done: list[Proxy] = []
        for entry in entries:
            try:
                done.append(await self._add_or_replace(entry))
            except ApiError as exc:
                return done, exc
        return done, None

    async def _add_or_replace(self, entry: dict[str, Any]) -> Proxy:
        name, listen, upstream = entry["name"], entry.get("listen", ""), entry["upstream"]
        existing = self.proxies.get(name)
        if existing is not None:
            if not await existing.differs(listen, upstream):
                return existing
            existing.stop()
        proxy = Proxy(name, listen, upstream, count_bytes=self.count_bytes)
        if entry.get("enabled", True):
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    async def update(self, proxy: Proxy, body: bytes) -> None:
        """``PATCH /proxies/{p}``: omitted fields keep their values."""
        try:
            given = decode_struct(loads(body), _PROXY_FIELDS, "Proxy")
        except GoJSONError as exc:
            raise bad_body(exc) from None
        await proxy.update(given.get("listen", proxy.listen), given.get("upstream", proxy.upstream),
                           given.get("enabled", proxy.enabled))

    def delete(self, name: str) -> None:
        self.get(name).stop()
        del self.proxies[name]

    async def reset(self) -> None:
        """``POST /reset``: every proxy enabled again, every toxic removed."""
        for proxy in list(self.proxies.values()):
            try:
                await proxy.start()
            except ProxyAlreadyStarted:
                pass
            await proxy.reset_toxics()

    def clear(self) -> None:
        """Stop and forget every proxy (server shutdown)."""
        for proxy in self.proxies.values():
            proxy.stop()
        self.proxies.clear()


class _RequestIds:
    """Request ids in the ``xid`` format Toxiproxy's zerolog middleware uses (20 base32 chars)."""

    def __init__(self) -> None:
        self._machine = os.urandom(3)
        self._pid = (os.getpid() & 0xFFFF).to_bytes(2, "big")
        self._counter = itertools.count(int.from_bytes(os.urandom(3), "big"))

    def next(self) -> str:
        raw = (int(time.time()).to_bytes(4, "big") + self._machine + self._pid
               + (next(self._counter) & 0xFFFFFF).to_bytes(3, "big"))
        return base64.b32hexencode(raw).decode().rstrip("=").lower()


Handler = Callable[..., Awaitable["_Response"]]
_Response = tuple[int, list[tuple[bytes, bytes]], bytes]

_JSON = [(b"content-type", b"application/json")]
_TEXT = [(b"content-type", b"text/plain; charset=utf-8"), (b"x-content-type-options", b"nosniff")]


def _ok(value: Any, status: int = 200) -> _Response:
    return status, _JSON, dumps(value).encode()


def _no_content() -> _Response:
    return 204, [], b""


def _error(exc: ApiError) -> _Response:
    return exc.status, _TEXT, (dumps({"error": exc.message, "status": exc.status}) + "\n").encode()


#: (path pattern, method) -> handler name; ``{x}`` matches one path segment.
ROUTES: dict[tuple[str, str], str] = {
    ("/reset", "POST"): "reset",
    ("/proxies", "GET"): "proxy_index",
    ("/proxies", "POST"): "proxy_create",
    ("/populate", "POST"): "populate",
    ("/proxies/{proxy}", "GET"): "proxy_show",
    ("/proxies/{proxy}", "POST"): "proxy_update",
    ("/proxies/{proxy}", "PATCH"): "proxy_update",
    ("/proxies/{proxy}", "DELETE"): "proxy_delete",
    ("/proxies/{proxy}/toxics", "GET"): "toxic_index",
    ("/proxies/{proxy}/toxics", "POST"): "toxic_create",
    ("/proxies/{proxy}/toxics/{toxic}", "GET"): "toxic_show",
    ("/proxies/{proxy}/toxics/{toxic}", "POST"): "toxic_update",
    ("/proxies/{proxy}/toxics/{toxic}", "PATCH"): "toxic_update",
    ("/proxies/{proxy}/toxics/{toxic}", "DELETE"): "toxic_delete",
    ("/version", "GET"): "version",
    ("/metrics", "GET"): "metrics",
}


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")


class ToxiproxyAPI:
    """The ASGI application: routing, the browser guard, request ids and the handlers.

    Args:
        collection: the proxies this API controls.
        metrics: serve ``GET /metrics`` (Toxiproxy's ``-proxy-metrics``); 404 otherwise.
        runtime_metrics: add process metrics to ``/metrics`` (``-runtime-metrics``).
    """

    def __init__(self, collection: ProxyCollection, *, metrics: bool = False, runtime_metrics: bool = False):
        self.collection = collection
        collection.count_bytes = collection.count_bytes or metrics
        self.metrics_enabled = metrics or runtime_metrics
        self._proxy_metrics = metrics
        self._runtime_metrics = runtime_metrics
        self._ids = _RequestIds()
        self._routes: list[tuple[re.Pattern[str], dict[str, str]]] = []
        by_pattern: dict[str, dict[str, str]] = {}
        for (pattern, method), handler in ROUTES.items():
            if pattern == "/metrics" and not self.metrics_enabled:
                continue
            by_pattern.setdefault(pattern, {})[method] = handler
        self._routes = [(_compile(p), methods) for p, methods in by_pattern.items()]

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        status, headers, payload = await self.dispatch(scope, body)
        headers = [*headers, (b"x-toxiproxy-request-id", self._ids.next().encode())]
        if status != 204:
            headers.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def dispatch(self, scope: dict[str, Any], body: bytes) -> _Response:
        path, method = scope["path"], scope["method"]
        for regex, methods in self._routes:
            match = regex.match(path)
            if match is None:
                continue
            handler = methods.get(method)
            if handler is None:
                return 405, [], b""  # gorilla/mux: method not allowed, empty body
            agent = dict(scope.get("headers") or []).get(b"user-agent", b"")
            if agent.startswith(b"Mozilla/"):
                return 403, _TEXT, b"User agent not allowed\n"
            try:
                if handler in ("version", "metrics"):
                    return await getattr(self, handler)(body, **match.groupdict())
                async with self.collection.lock:
                    return await getattr(self, handler)(body, **match.groupdict())
            except ApiError as exc:
                return _error(exc)
        return 404, _TEXT, b"404 page not found\n"

    # -- handlers (Toxiproxy's names, snake_case)
    async def proxy_index(self, body: bytes) -> _Response:
        proxies = self.collection.proxies
        return _ok({name: proxies[name].to_json() for name in sorted(proxies)})

    async def proxy_create(self, body: bytes) -> _Response:
        return _ok((await self.collection.create(body)).to_json(), 201)

    async def populate(self, body: bytes) -> _Response:
        done, error = await self.collection.populate(body)
        listed = [p.to_json() for p in done] or None  # Go marshals an empty result as null
        if error is None:
            return _ok({"proxies": listed}, 201)
        return _ok({"error": error.message, "status": error.status, "proxies": listed}, error.status)

    async def proxy_show(self, body: bytes, proxy: str) -> _Response:
        return _ok(self.collection.get(proxy).to_json())

    async def proxy_update(self, body: bytes, proxy: str) -> _Response:
        found = self.collection.get(proxy)
        await self.collection.update(found, body)
        return _ok(found.to_json())

    async def proxy_delete(self, body: bytes, proxy: str) -> _Response:
        self.collection.delete(proxy)
        return _no_content()

    async def toxic_index(self, body: bytes, proxy: str) -> _Response:
        return _ok([t.to_json() for t in self.collection.get(proxy).toxics()])

    async def toxic_create(self, body: bytes, proxy: str) -> _Response:
        found = self.collection.get(proxy)
        spec = parse_toxic(body, exists=lambda name: found.find_toxic(name) is not None)
        found.add_toxic(spec)
        return _ok(spec.to_json())  # 200, not 201: Toxiproxy's own status for a new toxic

    def _toxic(self, proxy: str, toxic: str) -> tuple[Proxy, Any]:
        found = self.collection.get(proxy)
        spec = found.find_toxic(toxic)
        if spec is None:
            raise ApiError(*ERR_TOXIC_NOT_FOUND)
        return found, spec

    async def toxic_show(self, body: bytes, proxy: str, toxic: str) -> _Response:
        return _ok(self._toxic(proxy, toxic)[1].to_json())

    async def toxic_update(self, body: bytes, proxy: str, toxic: str) -> _Response:
        found, spec = self._toxic(proxy, toxic)
        toxicity, attributes = update_toxic(spec, body)
        await found.update_toxic(spec, toxicity, attributes)
        return _ok(spec.to_json())

    async def toxic_delete(self, body: bytes, proxy: str, toxic: str) -> _Response:
        found, spec = self._toxic(proxy, toxic)
        await found.remove_toxic(spec)
        return _no_content()

    async def reset(self, body: bytes) -> _Response:
        await self.collection.reset()
        return _no_content()

    async def version(self, body: bytes) -> _Response:
        return 200, [(b"content-type", b"application/json;charset=utf-8")], \
            f'{{"version": "{VERSION}"}}\n'.encode()

    async def metrics(self, body: bytes) -> _Response:
        from agentverify.faults._metrics import render

        text, content_type = render(self.collection, proxy=self._proxy_metrics, runtime=self._runtime_metrics)
        return 200, [(b"content-type", content_type.encode())], text
