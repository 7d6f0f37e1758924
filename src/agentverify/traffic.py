"""Traffic through the load balancer: nginx config rendering, reload, drain.

The load balancer is nginx (as in the reference deployment's "switch traffic" step).
The main config is static; the upstream lives in ``upstream.conf``, rewritten by the
:class:`~agentverify.stack.stack.Stack` whenever the set of serving replicas changes,
followed by a reload (SIGHUP to the nginx master: what ``nginx -s reload`` sends, sent
through the backend without running a process for it). Every rendering carries a
*generation* number that nginx echoes in the ``X-Agentverify-Generation`` header, so
"the reload has taken effect" is observed, not assumed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import httpx

from agentverify import _http
from agentverify.errors import StackError

__all__ = ["GENERATION_HEADER", "UPSTREAM_HEADER", "nginx_conf", "upstream_attempts",
           "upstream_conf", "wait_for_generation"]

GENERATION_HEADER = "X-Agentverify-Generation"
#: every upstream a request was sent to, in order (nginx's ``$upstream_addr``): a request
#: retried on the next replica lists two, so "0 failed" can be told from "0 retried"
UPSTREAM_HEADER = "X-Agentverify-Upstream"


def upstream_attempts(header: str | None) -> int:
    """How many upstreams served one request, from :data:`UPSTREAM_HEADER`
    (``"10.0.0.2:8000, 10.0.0.3:8000"`` -> 2; missing -> 0: nginx answered itself)."""
    if not header:
        return 0
    # nginx separates attempts of one group by ", " and internal redirects by " : "
    return sum(1 for part in header.replace(" : ", ", ").split(",") if part.strip())


def nginx_conf(retries: int = 3) -> str:
    """The load balancer's main config; placeholders are resolved by the backend.

    ``retries``: how many upstreams one request may be tried on (``0``: none, the request
    fails with the first replica that fails it).
    """
    if retries > 0:
        # only a replica that cannot be reached is retried: an agent's own 502/503 (the
        # LLM failed after the agent's retries) goes to the client — retrying it would
        # multiply LLM calls, and nginx would count it against the replica and eject it
        retry = (f"proxy_next_upstream error timeout non_idempotent;\n"
                 f"            proxy_next_upstream_tries {retries};")
    else:
        retry = "proxy_next_upstream off;"
    return """\
# Rendered by agentverify. The upstream is in upstream.conf (rewritten on every change).
user ${user};
daemon off;
master_process on;
worker_processes 1;
pid ${datadir}/nginx.pid;
error_log stderr warn;
events { worker_connections 2048; }
http {
    access_log off;
    client_body_temp_path ${datadir}/client_body;
    proxy_temp_path ${datadir}/proxy;
    fastcgi_temp_path ${datadir}/fastcgi;
    uwsgi_temp_path ${datadir}/uwsgi;
    scgi_temp_path ${datadir}/scgi;
    include ${confdir}/upstream.conf;
    server {
        listen ${bind}:${port:http};
        add_header X-Agentverify-Generation $agentverify_generation always;
        add_header X-Agentverify-Upstream $upstream_addr always;
        location = /nginx-health { return 200 "ok\\n"; }
        location / {
            proxy_pass http://agents;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_connect_timeout 2s;
            proxy_read_timeout 120s;
            # A replica that is going away refuses connections; the request goes to the
            # next one instead of failing. Only connection errors and timeouts are
            # retried. A retried POST runs twice (a second LLM call): rollouts drain a
            # replica before stopping it, and the probe counts retried requests to prove it.
            @RETRY@
        }
    }
}
""".replace("@RETRY@", retry)


def upstream_conf(servers: Iterable[tuple[str, int]], generation: int) -> str:
    """The ``agents`` upstream over ``servers`` (host, port), stamped with ``generation``."""
    lines = [f"# generation {generation}",
             f'map $host $agentverify_generation {{ default "{generation}"; }}',
             "upstream agents {"]
    servers = list(servers)
    if not servers:
        # nginx refuses an empty upstream; a server that is never up keeps the config valid
        lines.append("    server 127.0.0.1:9 down;")
    for host, port in servers:
        lines.append(f"    server {host}:{port};")
    lines += ["    keepalive 32;", "}", ""]
    return "\n".join(lines)


def wait_for_generation(url: str, generation: int, *, timeout: float = 15.0) -> float:
    """Poll the load balancer until it answers with ``generation``; return seconds taken."""
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout:
        try:
            # the shared client opens a fresh connection each time: keep-alive would pin
            # an old nginx worker and show the old generation
            resp = _http.client().get(f"{url}/nginx-health", timeout=2.0)
            seen = resp.headers.get(GENERATION_HEADER)
            if seen is not None and int(seen) >= generation:
                return time.monotonic() - start
            last = f"generation {seen}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    raise StackError(f"load balancer at {url} still serves {last} "
                     f"{timeout:.0f}s after reload to generation {generation}")
