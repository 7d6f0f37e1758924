"""Conformance of a Toxiproxy-API server, derived from Toxiproxy's own api_test.go and proxy_test.go.

Runs against our built-in server as a real subprocess (``[builtin]``) and, when a
``toxiproxy-server`` binary is on PATH, against it too (``[real]``): statuses, error
texts, populate (validated first, add-or-replace, unchanged when identical), PATCH
merges, reset, cross-stream toxic names, toxics on live connections, ``enabled: false``
and resolved listen addresses. Upstream traffic goes to a real redis-server.
"""

# Fixtures are imported from fault_servers, so their names are parameters here too.
# ruff: noqa: F811

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentverify.errors import FaultInjectionError
from agentverify.faults.client import ToxiproxyClient
from tests.integration.fault_servers import (  # noqa: F401  (fixtures)
    Served,
    assert_closed_by_peer,
    fault_server,
    free_port,
    redis_server,
    start_fault_server,
    stop,
    toxiproxy,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def api(fault_server: Served, toxiproxy: ToxiproxyClient) -> Iterator[httpx.Client]:
    """Raw HTTP to the server (statuses and bodies as sent); proxies are cleaned by ``toxiproxy``."""
    with httpx.Client(base_url=fault_server.url, timeout=10, trust_env=False,
                      headers={"User-Agent": "conformance-test"}) as client:
        yield client


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = json.loads(response.text)
    assert body["status"] == response.status_code
    return response.status_code, body["error"]


def redis_ping(port: int, *, timeout: float = 5.0) -> float:
    """Seconds one PING/PONG takes on a fresh connection through ``port``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return ping_on(sock)


def ping_on(sock: socket.socket) -> float:
    start = time.monotonic()
    sock.sendall(b"PING\r\n")
    assert sock.recv(64) == b"+PONG\r\n"
    return time.monotonic() - start


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def upstream_of(redis: Served) -> str:
    return f"127.0.0.1:{redis.port}"


# --- server basics ------------------------------------------------------------------

def test_version_and_request_id(api: httpx.Client, fault_server: Served) -> None:
    response = api.get("/version")
    assert response.status_code == 200
    assert re.fullmatch(r'\{"version": "[^"]+"\}\n', response.text)
    if fault_server.impl == "builtin":
        assert response.json() == {"version": "2.12.0"}
    assert response.headers["X-Toxiproxy-Request-Id"]
    assert api.get("/proxies").headers["X-Toxiproxy-Request-Id"] != response.headers["X-Toxiproxy-Request-Id"]


def test_browser_user_agent_gets_403_and_others_do_not(api: httpx.Client) -> None:
    browser = api.get("/proxies", headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/33.0"})
    assert browser.status_code == 403
    assert browser.text.strip() == "User agent not allowed"
    assert api.get("/proxies", headers={"User-Agent": "Wget/2.1"}).status_code == 200


def test_index_with_no_proxies_is_an_empty_object(api: httpx.Client) -> None:
    response = api.get("/proxies")
    assert (response.status_code, response.json()) == (200, {})


def test_unknown_route_is_404(api: httpx.Client) -> None:
    assert api.get("/nope").status_code == 404
    assert api.get("/proxies/a/b/c/d").status_code == 404


# --- create / show / delete ---------------------------------------------------------

def test_create_requires_name_then_upstream_and_valid_json(api: httpx.Client) -> None:
    assert error_of(api.post("/proxies", json={})) == (400, "missing required field: name")
    assert error_of(api.post("/proxies", json={"name": "t"})) == (400, "missing required field: upstream")
    status, message = error_of(api.post("/proxies", content=b"{not json"))
    assert status == 400 and message.startswith("bad request body")
    assert api.get("/proxies").json() == {}


def test_create_resolves_listen_and_proxies_traffic(api: httpx.Client, redis_server: Served) -> None:
    response = api.post("/proxies", json={"name": "redis", "listen": "localhost:0",
                                          "upstream": upstream_of(redis_server)})
    assert response.status_code == 201
    proxy = response.json()
    assert proxy["name"] == "redis" and proxy["enabled"] is True and proxy["toxics"] == []
    host, port = proxy["listen"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    assert proxy["upstream"] == upstream_of(redis_server)
    assert api.get("/proxies").json()["redis"]["listen"] == proxy["listen"]
    assert redis_ping(int(port)) < 1.0


def test_create_name_conflict_is_409_and_port_conflict_is_500(api: httpx.Client, redis_server: Served) -> None:
    entry = {"name": "a", "listen": "127.0.0.1:0", "upstream": upstream_of(redis_server)}
    listen = api.post("/proxies", json=entry).json()["listen"]
    again = api.post("/proxies", json=entry)
    assert error_of(again) == (409, "proxy already exists")
    port = listen.rsplit(":", 1)[1]
    clash = api.post("/proxies", json={"name": "b", "listen": f"localhost:{port}", "upstream": "127.0.0.1:1"})
    assert error_of(clash) == (500, f"listen tcp 127.0.0.1:{port}: bind: address already in use")
    assert sorted(api.get("/proxies").json()) == ["a"]
    assert api.delete("/proxies/a").status_code == 204
    assert api.post("/proxies", json={"name": "b", "listen": f"127.0.0.1:{port}",
                                      "upstream": "127.0.0.1:1"}).status_code == 201


def test_disabled_proxy_keeps_listen_as_given_until_enabled(api: httpx.Client, redis_server: Served) -> None:
    port = free_port()
    created = api.post("/proxies", json={"name": "d", "listen": f"localhost:{port}",
                                         "upstream": upstream_of(redis_server), "enabled": False})
    assert created.status_code == 201
    assert created.json()["listen"] == f"localhost:{port}" and created.json()["enabled"] is False
    assert refused(port)
    enabled = api.patch("/proxies/d", json={"enabled": True})
    assert enabled.status_code == 200
    assert enabled.json()["listen"] == f"127.0.0.1:{port}" and enabled.json()["enabled"] is True
    assert redis_ping(port) < 1.0
    assert api.post("/proxies/d", json={"enabled": False}).json()["enabled"] is False  # deprecated POST
    assert refused(port)


def test_show_and_delete_unknown_proxy_are_404(api: httpx.Client, redis_server: Served) -> None:
    assert error_of(api.get("/proxies/ghost")) == (404, "proxy not found")
    assert error_of(api.delete("/proxies/ghost")) == (404, "proxy not found")
    assert error_of(api.patch("/proxies/ghost", json={})) == (404, "proxy not found")
    assert error_of(api.get("/proxies/ghost/toxics")) == (404, "proxy not found")
    port = int(api.post("/proxies", json={"name": "x", "listen": "127.0.0.1:0",
                                          "upstream": upstream_of(redis_server)}).json()["listen"].rsplit(":")[1])
    assert api.delete("/proxies/x").status_code == 204
    assert refused(port)
    assert error_of(api.delete("/proxies/x")) == (404, "proxy not found")


def test_patch_is_a_partial_update(api: httpx.Client, redis_server: Served) -> None:
    created = api.post("/proxies", json={"name": "p", "listen": "127.0.0.1:0",
                                         "upstream": upstream_of(redis_server)}).json()
    api.post("/proxies/p/toxics", json={"type": "latency", "attributes": {"latency": 1}})
    same = api.patch("/proxies/p", json={"enabled": True}).json()
    assert (same["listen"], same["upstream"], same["enabled"]) == (created["listen"], created["upstream"], True)
    moved = api.patch("/proxies/p", json={"listen": "127.0.0.1:0"}).json()
    assert moved["listen"] != created["listen"] and moved["upstream"] == created["upstream"]
    assert [t["name"] for t in moved["toxics"]] == ["latency_downstream"]
    assert redis_ping(int(moved["listen"].rsplit(":")[1])) < 1.0


# --- populate -------------------------------------------------------------------------

def test_populate_creates_in_input_order_enabled_by_default(api: httpx.Client, redis_server: Served) -> None:
    up = upstream_of(redis_server)
    response = api.post("/populate", json=[{"name": "one", "listen": "127.0.0.1:0", "upstream": up},
                                           {"name": "two", "listen": "127.0.0.1:0", "upstream": up,
                                            "enabled": False}])
    assert response.status_code == 201
    one, two = response.json()["proxies"]
    assert (one["name"], one["enabled"], two["name"], two["enabled"]) == ("one", True, "two", False)
    assert redis_ping(int(one["listen"].rsplit(":")[1])) < 1.0
    assert sorted(api.get("/proxies").json()) == ["one", "two"]


def test_populate_validates_everything_first(api: httpx.Client, redis_server: Served) -> None:
    up = upstream_of(redis_server)
    bad = api.post("/populate", json=[{"name": "one", "listen": "127.0.0.1:0", "upstream": up},
                                      {"name": "", "listen": "", "enabled": True}])
    assert bad.status_code == 400
    assert bad.json()["error"] == "missing required field: name at proxy 2"
    bad = api.post("/populate", json=[{"name": "one", "listen": "127.0.0.1:0", "upstream": up},
                                      {"name": "two", "listen": "127.0.0.1:0"}])
    assert bad.json()["error"] == "missing required field: upstream at proxy 2"
    assert api.get("/proxies").json() == {}


def test_populate_stops_at_the_first_failure(api: httpx.Client, redis_server: Served) -> None:
    up = upstream_of(redis_server)
    response = api.post("/populate", json=[{"name": "one", "listen": "127.0.0.1:0", "upstream": up},
                                           {"name": "two", "listen": "local373", "upstream": up},
                                           {"name": "three", "listen": "127.0.0.1:0", "upstream": up}])
    assert response.status_code == 500
    body = response.json()
    assert "local373" in body["error"] and "missing port in address" in body["error"]
    assert [p["name"] for p in body["proxies"]] == ["one"]
    assert sorted(api.get("/proxies").json()) == ["one"]


def test_populate_keeps_an_identical_proxy_unchanged_and_replaces_a_changed_one(
        api: httpx.Client, redis_server: Served) -> None:
    up = upstream_of(redis_server)
    first = api.post("/populate", json=[{"name": "keep", "listen": "127.0.0.1:0", "upstream": up},
                                        {"name": "swap", "listen": "127.0.0.1:0", "upstream": up},
                                        {"name": "other", "listen": "127.0.0.1:0", "upstream": up}]).json()
    keep, swap, _ = first["proxies"]
    keep_port = keep["listen"].rsplit(":")[1]
    for name in ("keep", "swap"):
        assert api.post(f"/proxies/{name}/toxics", json={"type": "latency"}).status_code == 200
    api.patch("/proxies/keep", json={"enabled": False})
    with socket.create_connection(("127.0.0.1", int(swap["listen"].rsplit(":")[1])), timeout=5) as live:
        second = api.post("/populate", json=[
            {"name": "keep", "listen": f"localhost:{keep_port}", "upstream": up},  # resolves to the same
            {"name": "swap", "listen": swap["listen"], "upstream": f"localhost:{up.rsplit(':')[1]}"}])
        assert second.status_code == 201
        kept, swapped = second.json()["proxies"]
        assert kept["listen"] == keep["listen"] and kept["enabled"] is False
        assert [t["name"] for t in kept["toxics"]] == ["latency_downstream"]
        assert swapped["toxics"] == [] and swapped["enabled"] is True
        live.settimeout(5)
        assert live.recv(16) == b""  # the replaced proxy's connections were closed
    assert sorted(api.get("/proxies").json()) == ["keep", "other", "swap"]  # unnamed ones stay


def test_populate_with_a_zero_port_always_replaces(api: httpx.Client, redis_server: Served) -> None:
    entry = {"name": "z", "listen": "127.0.0.1:0", "upstream": upstream_of(redis_server)}
    first = api.post("/populate", json=[entry]).json()["proxies"][0]
    second = api.post("/populate", json=[entry]).json()["proxies"][0]
    assert first["listen"] != second["listen"]


# --- toxics ---------------------------------------------------------------------------

@pytest.fixture
def proxy(api: httpx.Client, redis_server: Served) -> dict:
    return api.post("/proxies", json={"name": "t", "listen": "127.0.0.1:0",
                                      "upstream": upstream_of(redis_server)}).json()


def test_add_toxic_is_200_with_defaults(api: httpx.Client, proxy: dict) -> None:
    response = api.post("/proxies/t/toxics", json={"type": "latency",
                                                   "attributes": {"latency": 100, "jitter": 10}})
    assert response.status_code == 200
    assert response.json() == {"attributes": {"latency": 100, "jitter": 10}, "name": "latency_downstream",
                               "type": "latency", "stream": "downstream", "toxicity": 1}
    assert api.get("/proxies/t/toxics").json() == [response.json()]
    assert api.get("/proxies/t/toxics/latency_downstream").json() == response.json()
    assert api.get("/proxies/t").json()["toxics"] == [response.json()]


def test_omitted_unknown_and_null_attributes(api: httpx.Client, proxy: dict) -> None:
    zero = api.post("/proxies/t/toxics", json={"name": "a", "type": "latency"}).json()
    assert zero["attributes"] == {"latency": 0, "jitter": 0}
    extra = api.post("/proxies/t/toxics", json={"name": "b", "type": "bandwidth",
                                                "attributes": {"rate": 5, "burst": 9}}).json()
    assert extra["attributes"] == {"rate": 5}
    null = api.post("/proxies/t/toxics", json={"name": "c", "type": "slicer", "attributes": None})
    assert null.status_code == 200
    assert null.json()["attributes"] == {"average_size": 0, "size_variation": 0, "delay": 0}
    noop = api.post("/proxies/t/toxics", json={"name": "d", "type": "noop", "toxicity": 0.2}).json()
    assert (noop["attributes"], noop["stream"], noop["toxicity"]) == ({}, "downstream", 0.2)


def test_toxic_names_are_unique_across_streams(api: httpx.Client, proxy: dict) -> None:
    assert api.post("/proxies/t/toxics", json={"name": "foo", "type": "latency", "stream": "upstream"}) \
        .status_code == 200
    assert error_of(api.post("/proxies/t/toxics", json={"name": "foo", "type": "latency",
                                                        "stream": "downstream"})) == (409, "toxic already exists")
    assert error_of(api.post("/proxies/t/toxics", json={"name": "foo", "type": "slow_close",
                                                        "stream": "upstream"})) == (409, "toxic already exists")
    for stream in ("upstream", "downstream"):
        assert api.post("/proxies/t/toxics", json={"type": "latency", "stream": stream}).json()["name"] \
            == f"latency_{stream}"
    assert [(t["name"], t["stream"]) for t in api.get("/proxies/t/toxics").json()] == [
        ("foo", "upstream"), ("latency_upstream", "upstream"), ("latency_downstream", "downstream")]


def test_invalid_stream_and_type_are_400(api: httpx.Client, proxy: dict) -> None:
    assert error_of(api.post("/proxies/t/toxics", json={"type": "latency", "stream": "walrustream"})) == \
        (400, "stream was invalid, can be either upstream or downstream")
    assert error_of(api.post("/proxies/t/toxics", json={"type": "walrus"})) == (400, "invalid toxic type")
    status, message = error_of(api.post("/proxies/t/toxics", json={"type": "latency",
                                                                   "attributes": {"latency": "slow"}}))
    assert status == 400 and message.startswith("bad request body")
    assert api.get("/proxies/t/toxics").json() == []


def test_update_toxic_merges_attributes_and_keeps_toxicity(api: httpx.Client, proxy: dict) -> None:
    api.post("/proxies/t/toxics", json={"type": "latency", "attributes": {"latency": 100, "jitter": 10}})
    updated = api.patch("/proxies/t/toxics/latency_downstream", json={"toxicity": 0.5,
                                                                     "attributes": {"latency": 1000}})
    assert updated.status_code == 200
    assert (updated.json()["toxicity"], updated.json()["attributes"]) == (0.5, {"latency": 1000, "jitter": 10})
    again = api.post("/proxies/t/toxics/latency_downstream", json={"attributes": {"latency": 500},
                                                                  "name": "renamed", "stream": "upstream"})
    assert again.json() == {"attributes": {"latency": 500, "jitter": 10}, "name": "latency_downstream",
                            "type": "latency", "stream": "downstream", "toxicity": 0.5}
    assert error_of(api.patch("/proxies/t/toxics/ghost", json={})) == (404, "toxic not found")
    assert error_of(api.get("/proxies/t/toxics/ghost")) == (404, "toxic not found")


def test_remove_toxic(api: httpx.Client, proxy: dict) -> None:
    api.post("/proxies/t/toxics", json={"type": "latency"})
    assert api.delete("/proxies/t/toxics/latency_downstream").status_code == 204
    assert api.get("/proxies/t/toxics").json() == []
    assert error_of(api.delete("/proxies/t/toxics/latency_downstream")) == (404, "toxic not found")


def test_reset_enables_every_proxy_and_removes_every_toxic(api: httpx.Client, redis_server: Served) -> None:
    up = upstream_of(redis_server)
    api.post("/populate", json=[{"name": "a", "listen": "127.0.0.1:0", "upstream": up},
                                {"name": "b", "listen": "127.0.0.1:0", "upstream": up}])
    api.post("/proxies/a/toxics", json={"type": "latency", "attributes": {"latency": 100}})
    api.post("/proxies/b/toxics", json={"type": "timeout", "stream": "upstream"})
    api.patch("/proxies/b", json={"enabled": False})
    response = api.post("/reset")
    assert response.status_code == 204 and response.content == b""
    proxies = api.get("/proxies").json()
    assert sorted(proxies) == ["a", "b"]
    assert all(p["enabled"] and p["toxics"] == [] for p in proxies.values())
    assert redis_ping(int(proxies["b"]["listen"].rsplit(":")[1])) < 1.0


# --- behaviour on connections ----------------------------------------------------------

def test_toxics_apply_to_live_connections(api: httpx.Client, proxy: dict) -> None:
    port = int(proxy["listen"].rsplit(":")[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as live:
        assert ping_on(live) < 0.2
        api.post("/proxies/t/toxics", json={"type": "latency", "attributes": {"latency": 300}})
        assert ping_on(live) >= 0.29
        api.post("/proxies/t/toxics", json={"type": "latency", "stream": "upstream",
                                            "attributes": {"latency": 200}})
        assert ping_on(live) >= 0.49  # both directions add up
        api.delete("/proxies/t/toxics/latency_downstream")
        api.delete("/proxies/t/toxics/latency_upstream")
        assert ping_on(live) < 0.2
    assert api.get("/proxies/t").json()["toxics"] == []


def test_disabling_closes_the_listener_and_live_connections_and_keeps_toxics(
        api: httpx.Client, proxy: dict) -> None:
    port = int(proxy["listen"].rsplit(":")[1])
    api.post("/proxies/t/toxics", json={"type": "latency", "attributes": {"latency": 1}})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as live:
        ping_on(live)
        assert api.patch("/proxies/t", json={"enabled": False}).json()["enabled"] is False
        try:
            assert live.recv(16) == b""
        except ConnectionResetError:
            pass  # closed either way
        assert refused(port)
    enabled = api.patch("/proxies/t", json={"enabled": True}).json()
    assert enabled["listen"] == proxy["listen"]
    assert [t["name"] for t in enabled["toxics"]] == ["latency_downstream"]
    assert redis_ping(port) < 1.0


def test_unreachable_upstream_accepts_then_closes(api: httpx.Client) -> None:
    dead = free_port()
    proxy = api.post("/proxies", json={"name": "dead", "listen": "127.0.0.1:0",
                                       "upstream": f"127.0.0.1:{dead}"}).json()
    with socket.create_connection(("127.0.0.1", int(proxy["listen"].rsplit(":")[1])), timeout=5) as sock:
        assert sock.recv(16) == b""


def test_our_client_reports_server_errors_with_call_status_and_message(
        toxiproxy: ToxiproxyClient, redis_server: Served) -> None:
    toxiproxy.create_proxy("c", "127.0.0.1:0", upstream_of(redis_server))
    with pytest.raises(FaultInjectionError, match=r"create proxy c: HTTP 409: proxy already exists"):
        toxiproxy.create_proxy("c", "127.0.0.1:0", upstream_of(redis_server))
    with pytest.raises(FaultInjectionError, match=r"add walrus toxic to c: HTTP 400: invalid toxic type"):
        toxiproxy.add_toxic("c", "walrus")
    with pytest.raises(FaultInjectionError, match=r"HTTP 404: proxy not found"):
        toxiproxy.get_proxy("nope")
    toxic = toxiproxy.add_toxic("c", "latency", attributes={"latency": 5, "jitter": 1})
    updated = toxiproxy.update_toxic("c", toxic.name, attributes={"latency": 7})
    assert updated.attributes == {"latency": 7, "jitter": 1}
    assert toxiproxy.disable("c").enabled is False and toxiproxy.enable("c").enabled is True
    toxiproxy.reset()
    assert toxiproxy.get_proxy("c").toxics == ()


# --- the server process -----------------------------------------------------------------

def test_config_file_is_loaded_at_start(fault_server: Served, redis_server: Served, tmp_path: Path) -> None:
    config = tmp_path / "toxiproxy.json"
    config.write_text(json.dumps([{"name": "from-config", "listen": "127.0.0.1:0",
                                   "upstream": upstream_of(redis_server)}]))
    with start_fault_server(fault_server.impl, tmp_path, "-config", str(config)) as served, \
            ToxiproxyClient(served.url) as client:
        proxy = client.get_proxy("from-config")
        assert proxy.enabled and redis_ping(proxy.port) < 1.0


def test_metrics_only_when_enabled(fault_server: Served, redis_server: Served, tmp_path: Path) -> None:
    assert httpx.get(fault_server.url + "/metrics", trust_env=False).status_code == 404
    with start_fault_server(fault_server.impl, tmp_path, "-proxy-metrics") as served, \
            ToxiproxyClient(served.url) as client:
        proxy = client.create_proxy("m", "127.0.0.1:0", upstream_of(redis_server))
        redis_ping(proxy.port)
        deadline = time.monotonic() + 5
        while True:
            text = httpx.get(served.url + "/metrics", trust_env=False).text
            if 'toxiproxy_proxy_sent_bytes_total{direction="downstream"' in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        line = next(x for x in text.splitlines()
                    if x.startswith('toxiproxy_proxy_sent_bytes_total{direction="downstream"'))
        assert 'proxy="m"' in line and float(line.rsplit(" ", 1)[1]) == len(b"+PONG\r\n")


def test_sigterm_stops_cleanly_closing_every_listener(fault_server: Served, redis_server: Served,
                                                      tmp_path: Path) -> None:
    with start_fault_server(fault_server.impl, tmp_path) as served:
        with ToxiproxyClient(served.url) as client:
            port = client.create_proxy("s", "127.0.0.1:0", upstream_of(redis_server)).port
        live = socket.create_connection(("127.0.0.1", port), timeout=5)
        ping_on(live)
        assert stop(served) == 0
        assert_closed_by_peer(live)
        assert refused(port) and refused(served.port)
