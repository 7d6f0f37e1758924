"""The fault proxy's API rules without sockets: Go-compatible JSON and addresses, populate
validation, routing answers, CLI flags, and the weight of importing the client."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest

from agentverify.errors import FaultInjectionError
from agentverify.faults._addr import AddrError, format_addr, resolve, split_host_port
from agentverify.faults._gojson import Float32, GoJSONError, decode_struct, dumps, loads, to_float32
from agentverify.faults.api import ProxyCollection, ToxiproxyAPI, _RequestIds
from agentverify.faults.client import Proxy, Toxic, ToxiproxyClient
from agentverify.faults.server import parse_args
from agentverify.faults.toxics import ApiError

# --- Go JSON ------------------------------------------------------------------------

def test_loads_reads_the_first_value_like_gos_decoder() -> None:
    assert loads(b'  {"a": 1} trailing garbage') == {"a": 1}
    for raw, message in [(b"", "EOF"), (b" \n", "EOF"), (b'{"a":', "unexpected EOF"),
                         (b"nope", "invalid character 'n' looking for beginning of value"),
                         (b"NaN", "invalid character 'N' looking for beginning of value")]:
        with pytest.raises(GoJSONError, match=f"^{re.escape(message)}$"):
            loads(raw)


def test_decode_struct_matches_keys_case_insensitively_and_checks_types() -> None:
    fields = {"name": "string", "enabled": "bool", "rate": "int64"}
    assert decode_struct({"NAME": "x", "Enabled": False, "other": 1, "rate": None}, fields, "P") == \
        {"name": "x", "enabled": False}
    with pytest.raises(GoJSONError, match=r"cannot unmarshal string into Go struct field P\.enabled of type bool"):
        decode_struct({"enabled": "yes"}, fields, "P")
    with pytest.raises(GoJSONError, match=r"cannot unmarshal number 99999999999999999999"):
        decode_struct({"rate": 99999999999999999999}, fields, "P")
    with pytest.raises(GoJSONError, match=r"cannot unmarshal array into Go value of type P"):
        decode_struct([], fields, "P")


def test_dumps_writes_like_go() -> None:
    assert dumps({"a": "<&>", "u": "é"}) == '{"a":"\\u003c\\u0026\\u003e","u":"é"}'
    assert dumps([Float32(1.0), Float32(to_float32(0.2)), Float32(to_float32(0.5)), Float32(0.0)]) == \
        "[1,0.2,0.5,0]"


# --- addresses ------------------------------------------------------------------------

def test_split_host_port_gives_gos_errors() -> None:
    assert split_host_port("[::1]:80") == ("::1", "80")
    assert split_host_port(":0") == ("", "0")
    for bad, why in [("local373", "missing port in address"), ("a:b:c", "too many colons in address"),
                     ("[::1", "missing ']' in address")]:
        with pytest.raises(AddrError, match=f"^address {re.escape(bad)}: {why}$"):
            split_host_port(bad)


def test_resolve_prefers_ipv4_and_formats_like_tcpaddr() -> None:
    assert str(asyncio.run(resolve("localhost:7070"))) == "127.0.0.1:7070"
    assert str(asyncio.run(resolve("0.0.0.0:0"))) == "0.0.0.0:0"
    assert str(asyncio.run(resolve(""))) == ":0"
    assert asyncio.run(resolve("[::]:5")).wildcard and not asyncio.run(resolve("127.0.0.1:5")).wildcard
    with pytest.raises(AddrError, match="invalid port"):
        asyncio.run(resolve("127.0.0.1:99999"))
    assert format_addr("::", 41) == "[::]:41" and format_addr(None, 41) == ":41"


# --- populate validation and handlers ---------------------------------------------------

def test_populate_is_validated_whole_before_anything_is_created() -> None:
    parse = ProxyCollection.parse_populate
    entries = parse(b'[{"name": "a", "upstream": "x:1"}, {"name": "b", "upstream": "y:2", "enabled": null}]')
    assert [e["name"] for e in entries] == ["a", "b"] and "enabled" not in entries[1]
    for body, message in [
            (b'[{"name": "a", "upstream": "x:1"}, {"name": "", "listen": ""}]',
             "missing required field: name at proxy 2"),
            (b'[{"name": "a"}]', "missing required field: upstream at proxy 1"),
            (b'{"name": "a"}',
             "bad request body: json: cannot unmarshal object into Go value of type []toxiproxy.Proxy"),
            (b'[{"name": 5}]',
             "bad request body: json: cannot unmarshal number into Go struct field Proxy.name of type string")]:
        with pytest.raises(ApiError) as info:
            parse(body)
        assert (info.value.status, info.value.message) == (400, message)


def call(app: ToxiproxyAPI, method: str, path: str, body: bytes = b"",
         agent: bytes = b"test") -> tuple[int, bytes]:
    scope = {"type": "http", "method": method, "path": path, "headers": [(b"user-agent", agent)]}
    status, _, payload = asyncio.run(app.dispatch(scope, body))
    return status, payload


def test_routing_answers_like_gorilla_mux_and_toxiproxy() -> None:
    app = ToxiproxyAPI(ProxyCollection())
    assert call(app, "GET", "/version") == (200, b'{"version": "2.12.0"}\n')
    assert call(app, "GET", "/proxies") == (200, b"{}")
    assert call(app, "GET", "/nope") == (404, b"404 page not found\n")
    assert call(app, "PUT", "/proxies") == (405, b"")
    assert call(app, "GET", "/proxies", agent=b"Mozilla/5.0") == (403, b"User agent not allowed\n")
    assert call(app, "GET", "/proxies/x") == (404, b'{"error":"proxy not found","status":404}\n')
    assert call(app, "POST", "/proxies", b'{"name": "x"}') == \
        (400, b'{"error":"missing required field: upstream","status":400}\n')
    assert call(app, "POST", "/populate", b"[]") == (201, b'{"proxies":null}')
    assert call(app, "GET", "/metrics")[0] == 404
    assert call(ToxiproxyAPI(ProxyCollection(), metrics=True), "GET", "/metrics")[0] == 200


def test_request_ids_are_xid_shaped_and_unique() -> None:
    ids = _RequestIds()
    seen = {ids.next() for _ in range(1000)}
    assert len(seen) == 1000 and all(re.fullmatch(r"[0-9a-v]{20}", i) for i in seen)


# --- CLI and client -----------------------------------------------------------------------

def test_toxiproxys_single_dash_flags_are_accepted() -> None:
    args = parse_args(["-host", "127.0.0.1", "-port=0", "-config", "c.json", "-proxy-metrics"])
    assert (args.host, args.port, args.config, args.metrics) == ("127.0.0.1", 0, "c.json", True)
    args = parse_args(["--host", "::1", "--port", "9", "--metrics"])
    assert (args.host, args.port, args.metrics) == ("::1", 9, True)


def test_the_server_cli_prints_its_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "agentverify.faults.server", "-version"],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "toxiproxy-server version 2.12.0\n")


def test_importing_the_client_does_not_import_the_server() -> None:
    code = ("import sys, agentverify.faults, agentverify.faults.client; "
            "print([m for m in ('agentverify.faults.server', 'agentverify.faults.proxy', 'uvicorn') "
            "if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert proc.stdout.strip() == "[]"


def test_client_dataclasses_and_unreachable_server() -> None:
    proxy = Proxy.from_json({"name": "r", "listen": "[::]:8666", "upstream": "redis:6379", "enabled": True,
                             "Logger": {}, "toxics": [{"name": "l", "type": "latency", "stream": "upstream",
                                                       "toxicity": 1, "attributes": {"latency": 1}}]})
    assert (proxy.host, proxy.port) == ("::", 8666)
    assert proxy.toxics == (Toxic("l", "latency", "upstream", 1.0, {"latency": 1}),)
    with ToxiproxyClient("http://127.0.0.1:9", timeout=0.5) as client:
        with pytest.raises(FaultInjectionError, match=r"toxiproxy version: GET http://127.0.0.1:9/version failed"):
            client.version()
        with pytest.raises(FaultInjectionError, match="not ready within 0.2s"):
            client.wait_ready(0.2)
        with pytest.raises(FaultInjectionError, match="unknown field"):
            client.update_proxy("r", port=1)
