"""A typed client for any server speaking Toxiproxy's HTTP API (ours or a real toxiproxy-server).

Each :class:`ToxiproxyClient` holds its own base URL and HTTP connection pool: several
clients (and servers) can be used at once, nothing lives on the class. Every error the
server answers with becomes :class:`~agentverify.errors.FaultInjectionError` naming the
call, the HTTP status and the server's own message; so does a server that cannot be
reached.

Example::

    with ToxiproxyClient("http://127.0.0.1:8474") as tp:
        tp.wait_ready(10)
        redis = tp.create_proxy("redis.agent-0", "127.0.0.1:0", "127.0.0.1:6379")
        print(redis.listen)                       # 127.0.0.1:41234, the bound port
        tp.add_toxic(redis.name, "latency", attributes={"latency": 200})
        tp.remove_toxic(redis.name, "latency_downstream")
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from agentverify import _http
from agentverify.errors import FaultInjectionError

__all__ = ["ToxiproxyClient", "Proxy", "Toxic"]


@dataclass(frozen=True)
class Toxic:
    """A toxic on a proxy, as the server reports it.

    Example:
        >>> Toxic.from_json({"name": "l", "type": "latency", "stream": "downstream",
        ...                  "toxicity": 1, "attributes": {"latency": 5, "jitter": 0}}).attributes["latency"]
        5
    """

    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Toxic:
        return cls(name=data["name"], type=data["type"], stream=data.get("stream", "downstream"),
                   toxicity=float(data.get("toxicity", 1.0)), attributes=dict(data.get("attributes") or {}))


@dataclass(frozen=True)
class Proxy:
    """A proxy as the server reports it; ``listen`` is the bound address once enabled.

    Example:
        >>> p = Proxy.from_json({"name": "r", "listen": "127.0.0.1:41234", "upstream": "127.0.0.1:6379",
        ...                      "enabled": True, "toxics": []})
        >>> p.host, p.port
        ('127.0.0.1', 41234)
    """

    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: tuple[Toxic, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Proxy:
        return cls(name=data["name"], listen=data["listen"], upstream=data["upstream"],
                   enabled=bool(data["enabled"]),
                   toxics=tuple(Toxic.from_json(t) for t in data.get("toxics") or ()))

    @property
    def host(self) -> str:
        """Host part of ``listen`` (without IPv6 brackets)."""
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        """Port part of ``listen``."""
        return int(self.listen.rsplit(":", 1)[1])


class ToxiproxyClient:
    """Client of one Toxiproxy-API server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8474``.
        timeout: seconds per HTTP call.

    Example::

        with ToxiproxyClient("http://127.0.0.1:8474", timeout=5) as tp:
            tp.populate([{"name": "llm.agent-0", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:8900"}])
            tp.disable("llm.agent-0")        # the "down" fault
            tp.enable("llm.agent-0")
    """

    def __init__(self, base_url: str, *, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        # A user agent of our own: Toxiproxy refuses browser-like ones with 403.
        self._http = _http.new_client(base_url=self.base_url, timeout=timeout,
                                      trust_env=False,
                                      headers={"User-Agent": "agentverify-toxiproxy-client"})

    def __enter__(self) -> ToxiproxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"ToxiproxyClient({self.base_url!r})"

    # -- the one place HTTP becomes our errors
    def _call(self, what: str, method: str, path: str, *, body: Any = None,
              expect: tuple[int, ...] = (200,)) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise FaultInjectionError(f"toxiproxy {what}: {method} {self.base_url}{path} failed: "
                                      f"{type(exc).__name__}: {exc}") from exc
        if response.status_code not in expect:
            try:
                message = response.json().get("error") or response.text.strip()
            except ValueError:
                message = response.text.strip()
            raise FaultInjectionError(f"toxiproxy {what}: HTTP {response.status_code}: {message} "
                                      f"({method} {self.base_url}{path})")
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise FaultInjectionError(f"toxiproxy {what}: {method} {self.base_url}{path} answered "
                                      f"{response.status_code} with a body that is not JSON: "
                                      f"{response.text[:200]!r}") from exc

    # -- server
    def version(self) -> str:
        """The server's version, e.g. ``2.12.0``."""
        return str(self._call("version", "GET", "/version")["version"])

    def wait_ready(self, timeout: float, *, interval: float = 0.05) -> str:
        """Wait until ``GET /version`` answers; return the version.

        Raises:
            FaultInjectionError: not answering within ``timeout`` seconds (with the last error).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.version()
            except FaultInjectionError as exc:
                if time.monotonic() >= deadline:
                    raise FaultInjectionError(f"toxiproxy at {self.base_url} not ready within {timeout}s: "
                                              f"{exc}") from exc
            time.sleep(interval)

    def reset(self) -> None:
        """Enable every proxy and remove every toxic (proxies are kept)."""
        self._call("reset", "POST", "/reset", expect=(204,))

    # -- proxies
    def proxies(self) -> dict[str, Proxy]:
        """Every proxy, by name."""
        return {name: Proxy.from_json(p) for name, p in self._call("proxies", "GET", "/proxies").items()}

    def get_proxy(self, name: str) -> Proxy:
        return Proxy.from_json(self._call(f"get proxy {name}", "GET", f"/proxies/{name}"))

    def create_proxy(self, name: str, listen: str, upstream: str, enabled: bool = True) -> Proxy:
        """Create one proxy (409 if the name exists; 500 if ``listen`` cannot be bound)."""
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        return Proxy.from_json(self._call(f"create proxy {name}", "POST", "/proxies", body=body, expect=(201,)))

    def populate(self, proxies: list[dict[str, Any]]) -> list[Proxy]:
        """Add or replace proxies by name in one call; returns them in input order.

        Note the server keeps a proxy *unchanged* only when its shown listen equals the
        resolved new one: pass back a bound address (``127.0.0.1:41234``) to keep it,
        ``127.0.0.1:0`` always replaces it.
        """
        data = self._call("populate", "POST", "/populate", body=list(proxies), expect=(201,))
        return [Proxy.from_json(p) for p in data.get("proxies") or ()]

    def update_proxy(self, name: str, **fields: Any) -> Proxy:
        """PATCH ``listen``, ``upstream`` and/or ``enabled``; omitted fields are kept."""
        unknown = set(fields) - {"listen", "upstream", "enabled"}
        if unknown:
            raise FaultInjectionError(f"toxiproxy update proxy {name}: unknown field(s) {sorted(unknown)}; "
                                      "expected listen, upstream, enabled")
        return Proxy.from_json(self._call(f"update proxy {name}", "PATCH", f"/proxies/{name}", body=fields))

    def enable(self, name: str) -> Proxy:
        return self.update_proxy(name, enabled=True)

    def disable(self, name: str) -> Proxy:
        """Close the proxy's listener and every live connection (toxics are kept)."""
        return self.update_proxy(name, enabled=False)

    def delete_proxy(self, name: str) -> None:
        self._call(f"delete proxy {name}", "DELETE", f"/proxies/{name}", expect=(204,))

    # -- toxics
    def toxics(self, proxy: str) -> list[Toxic]:
        return [Toxic.from_json(t) for t in self._call(f"toxics of {proxy}", "GET", f"/proxies/{proxy}/toxics")]

    def add_toxic(self, proxy: str, type: str, *, name: str | None = None, stream: str = "downstream",
                  toxicity: float = 1.0, attributes: dict[str, Any] | None = None) -> Toxic:
        """Add a toxic; its default name is ``<type>_<stream>`` (unique across both streams)."""
        body: dict[str, Any] = {"type": type, "stream": stream, "toxicity": toxicity,
                                "attributes": dict(attributes or {})}
        if name is not None:
            body["name"] = name
        return Toxic.from_json(self._call(f"add {type} toxic to {proxy}", "POST", f"/proxies/{proxy}/toxics",
                                          body=body))

    def update_toxic(self, proxy: str, name: str, *, toxicity: float | None = None,
                     attributes: dict[str, Any] | None = None) -> Toxic:
        """Merge ``attributes`` into the toxic (others keep their values); keep toxicity if omitted."""
        body: dict[str, Any] = {"attributes": dict(attributes or {})}
        if toxicity is not None:
            body["toxicity"] = toxicity
        return Toxic.from_json(self._call(f"update toxic {name} of {proxy}", "PATCH",
                                          f"/proxies/{proxy}/toxics/{name}", body=body))

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call(f"remove toxic {name} of {proxy}", "DELETE", f"/proxies/{proxy}/toxics/{name}", expect=(204,))
